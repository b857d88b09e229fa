"""tools/csms.py driven by a CPython charge point built from the `ocpp` package (no firmware involved)."""

import asyncio
import base64
import json
import os
import re
import socket
import ssl
import subprocess
import threading

import pytest
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import PY, ROOT, CallErrorReply, free_port, wait_until

PROFILE = {"connectorId": 1, "csChargingProfiles": {
    "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Absolute", "chargingSchedule": {
        "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.4}]}}}


class PyChargePoint(ChargePoint):
    """A reference charge point: answers a few CS CALLs and records what it got."""

    def __init__(self, cp_id, ws):
        super().__init__(cp_id, ws, response_timeout=10)
        self.received = []

    @on(Action.reset)
    async def on_reset(self, type, **_):
        self.received.append(("Reset", type))
        if getattr(self, "leave_on_reset", False):
            await self._connection.close()   # a charger that reboots before answering
        return call_result.Reset(status="Accepted")

    @on(Action.set_charging_profile)
    def on_profile(self, connector_id, cs_charging_profiles):
        self.received.append(("SetChargingProfile", cs_charging_profiles))
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id):
        raise InternalError(description="lock motor jammed")


class LoopThread:
    """An asyncio loop in a thread, so the blocking CsmsProc helpers and the async CP work side by side."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sockets = []

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, *args, **kwargs):
        """open_cp(...) in the loop; the socket is closed at teardown."""
        cp = self.run(open_cp(*args, **kwargs))
        self.sockets.append(cp._connection)
        return cp

    def close(self):
        async def cancel_all():
            for ws in self.sockets:
                await ws.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def aloop():
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


async def serve_quietly(cp):
    try:
        await cp.start()
    except ConnectionClosed:
        pass


async def open_cp(url, cp_id, password=None, cafile=None, subprotocols=("ocpp1.6",)):
    headers = {}
    if password is not None:
        creds = cp_id.encode() + b":" + password
        headers["Authorization"] = "Basic " + base64.b64encode(creds).decode()
    ctx = ssl.create_default_context(cafile=cafile) if url.startswith("wss:") else None
    ws = await connect(url + "/" + cp_id, subprotocols=list(subprotocols), additional_headers=headers,
                       ssl=ctx, open_timeout=10, compression=None)
    cp = PyChargePoint(cp_id, ws)
    cp.task = asyncio.ensure_future(serve_quietly(cp))
    return cp


def boot(aloop, cp):
    return aloop.run(cp.call(call.BootNotification(charge_point_vendor="Test", charge_point_model="Py")))


def test_core_answers_and_logging(csms_factory, aloop):
    csms = csms_factory(tags=("TAG1", "TAG2"), interval=77)
    cp = aloop.connect(csms.url, "CP1")
    conf = boot(aloop, cp)
    assert (conf.status, conf.interval) == ("Accepted", 77)
    assert conf.current_time.endswith("Z")
    assert aloop.run(cp.call(call.Heartbeat())).current_time
    assert aloop.run(cp.call(call.Authorize(id_tag="TAG2"))).id_tag_info["status"] == "Accepted"
    assert aloop.run(cp.call(call.Authorize(id_tag="NOPE"))).id_tag_info["status"] == "Invalid"
    starts = [aloop.run(cp.call(call.StartTransaction(connector_id=1, id_tag=tag, meter_start=0,
                                                      timestamp="2025-01-01T00:00:00Z")))
              for tag in ("TAG1", "NOPE")]
    assert starts[0].id_tag_info["status"] == "Accepted"
    assert starts[1].id_tag_info["status"] == "Invalid"
    assert starts[1].transaction_id > starts[0].transaction_id
    aloop.run(cp.call(call.MeterValues(connector_id=1, transaction_id=starts[0].transaction_id,
                                       meter_value=[{"timestamp": "2025-01-01T00:01:00Z",
                                                     "sampledValue": [{"value": "12"}]}])))
    aloop.run(cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging")))
    stop = aloop.run(cp.call(call.StopTransaction(meter_stop=12, timestamp="2025-01-01T00:02:00Z",
                                                  transaction_id=starts[0].transaction_id, id_tag="TAG1")))
    assert stop.id_tag_info["status"] == "Accepted"
    dt = [aloop.run(cp.call(call.DataTransfer(vendor_id=v))).status
          for v in ("com.example", "org.openchargealliance")]
    assert dt == ["UnknownVendorId", "Accepted"]
    aloop.run(cp.call(call.FirmwareStatusNotification(status="Idle")))
    aloop.run(cp.call(call.DiagnosticsStatusNotification(status="Idle")))

    boot_in = csms.wait_for("BootNotification", cp="CP1")
    assert boot_in == {"chargePointVendor": "Test", "chargePointModel": "Py"}
    msgs = csms.messages("CP1")
    assert [m["dir"] for m in msgs[:2]] == ["in", "out"]
    assert msgs[1]["msg"][0] == 3 and msgs[1]["msg"][1] == msgs[0]["msg"][1]
    assert json.loads(msgs[0]["raw"]) == msgs[0]["msg"]
    assert len(csms.calls("StatusNotification", cp="CP1")) == 1
    # Every frame is on stdout in both directions and in the JSON-lines file, in the same order.
    assert len(msgs) == 26
    wait_until(lambda: sum(" CP1 <- [3," in line for line in csms.output) == 13, 10, msg="13 results")
    assert sum(" CP1 -> [2," in line for line in csms.output) == 13
    with open(csms.log_path) as f:
        logged = [json.loads(line) for line in f]
    assert [e["raw"] for e in logged] == [m["raw"] for m in msgs]


def test_identical_start_resend_is_the_same_transaction(csms_factory, aloop):
    csms = csms_factory(tags=("TAG1",))
    cp = aloop.connect(csms.url, "CP1")
    boot(aloop, cp)

    def start(meter_start, timestamp="2025-01-01T00:00:00Z"):
        return aloop.run(cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=meter_start,
                                                       timestamp=timestamp))).transaction_id
    first = start(100)
    assert start(100) == first          # the charger lost our answer and sent it again
    assert start(101) != first          # any other field differing is another transaction
    assert start(100, "2025-01-01T00:00:01Z") not in (first,)
    # The tool's stdout is read by a thread: the line may land a moment after the answer did.
    assert wait_until(lambda: any("StartTransaction resent: transaction %d" % first in line for line in csms.output),
                      10, msg="resend logged")


def test_garbage_from_cp_is_logged_and_survived(csms_factory, aloop):
    csms = csms_factory()
    cp = aloop.connect(csms.url, "CP1")
    boot(aloop, cp)
    aloop.run(cp._connection.send("this is not json"))
    aloop.run(cp._connection.send('[2,"g1","Heartbeat",{"bogus":1}]'))
    aloop.run(cp._connection.send('[2,"g2","Heartbeat",[]]'))
    err = wait_until(lambda: [m["msg"] for m in csms.messages("CP1")
                              if m["dir"] == "out" and m["msg"][1] == "g1"], 10, msg="reply to g1")[0]
    assert err[0] == 4 and err[2] == "FormationViolation"   # the 1.6 spelling, not the library's
    assert any(m["raw"] == "this is not json" and m["msg"] is None for m in csms.messages("CP1"))
    # its stdout is read by another thread: the line may come a moment after the control socket has the frame
    assert wait_until(lambda: any("this is not json" in line for line in csms.output), 10, msg="logged")
    # The connection and the server are still fine.
    assert aloop.run(cp.call(call.Heartbeat())).current_time
    assert csms.connected() == ["CP1"]


def test_control_call_raw_and_since(csms_factory, aloop):
    csms = csms_factory()
    cp = aloop.connect(csms.url, "CP7")
    boot(aloop, cp)
    mark = len(csms.messages())
    assert csms.call("CP7", "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    assert csms.call("CP7", "SetChargingProfile", PROFILE) == {"status": "Accepted"}
    assert [r[0] for r in cp.received] == ["Reset", "SetChargingProfile"]
    wire = [m["msg"] for m in csms.messages("CP7")[mark:] if m["dir"] == "out"]
    assert wire[1][2:] == ["SetChargingProfile", PROFILE]
    with pytest.raises(CallErrorReply, match="CALLERROR InternalError lock motor jammed"):
        csms.call("CP7", "UnlockConnector", {"connectorId": 1})
    with pytest.raises(CallErrorReply, match="unknown OCPP 1.6 action"):
        csms.call("CP7", "NoSuchAction", {})

    # A malformed CALL sent raw gets the CP's CALLERROR back, matched by its id.
    reply = csms.raw("CP7", '[2,"raw-1","Reset",{"type":"Bogus"}]')
    assert reply[:2] == [4, "raw-1"]
    assert ("Reset", "Bogus") not in cp.received
    assert csms.raw("CP7", "not json at all", timeout=1) is None   # the ocpp package stays silent
    assert any(m["raw"] == "not json at all" and m["dir"] == "out" for m in csms.messages("CP7"))

    reply = csms.control({"cmd": "messages", "since": 0})
    older = csms.control({"cmd": "messages", "since": reply["next"] - 2})
    assert older["messages"] == reply["messages"][-2:] and older["next"] == reply["next"]
    assert csms.control({"cmd": "messages", "since": reply["next"]})["messages"] == []
    assert not csms.control({"cmd": "call", "cp": "GHOST", "action": "Reset",
                             "payload": {"type": "Soft"}})["ok"]
    assert not csms.control({"cmd": "bogus"})["ok"]


def test_set_and_disconnect(csms_factory, aloop):
    csms = csms_factory(tags=("TAG1",))
    csms.set(boot_status="Pending", interval=5, tags=["NEW"], start_status="Blocked")
    cp = aloop.connect(csms.url, "CP1")
    conf = boot(aloop, cp)
    assert (conf.status, conf.interval) == ("Pending", 5)
    assert aloop.run(cp.call(call.Authorize(id_tag="TAG1"))).id_tag_info["status"] == "Invalid"
    assert aloop.run(cp.call(call.Authorize(id_tag="NEW"))).id_tag_info["status"] == "Accepted"
    start = aloop.run(cp.call(call.StartTransaction(connector_id=1, id_tag="NEW", meter_start=0,
                                                    timestamp="2025-01-01T00:00:00Z")))
    assert start.id_tag_info["status"] == "Blocked"
    assert csms.connected() == ["CP1"]
    assert csms.control({"cmd": "disconnect", "cp": "CP1"})["ok"]
    aloop.run(asyncio.wait_for(cp.task, 10))
    wait_until(lambda: csms.connected() == [], 10, msg="CP1 gone")


def test_wss_basic_auth(csms_factory, aloop, pki):
    key = bytes(range(0xEC, 0x100))   # 20 raw bytes, not UTF-8
    csms = csms_factory(tls=True, pki=pki, auth={"CP1": "s3cret-passw0rd", "CP2": key.hex()})
    assert csms.url.startswith("wss://")
    cp = aloop.connect(csms.url, "CP1", b"s3cret-passw0rd", pki["ca"])
    assert boot(aloop, cp).status == "Accepted"
    cp2 = aloop.connect(csms.url, "CP2", key, pki["ca"])
    assert boot(aloop, cp2).status == "Accepted"

    for cp_id, pw, why in [("CP1", b"wrong", "CP1.*password did NOT match"),
                           ("CP1", None, "no Authorization header from CP1"),
                           ("CP2", key.hex().encode(), "CP2.*hex text of the key"),
                           ("CP9", b"x", "CP9.*unknown charge point")]:
        with pytest.raises(InvalidStatus) as exc:
            aloop.connect(csms.url, cp_id, pw, pki["ca"])
        assert exc.value.response.status_code == 401
        csms.wait_line("refused with 401: .*" + why, timeout=10)

    with pytest.raises(ssl.SSLCertVerificationError):
        aloop.connect(csms.url, "CP1", b"s3cret-passw0rd", pki["other_ca"])

    csms.set(auth={"CP1": "rotated-key-123"})
    with pytest.raises(InvalidStatus):
        aloop.connect(csms.url, "CP1", b"s3cret-passw0rd", pki["ca"])
    cp3 = aloop.connect(csms.url, "CP1", b"rotated-key-123", pki["ca"])
    assert boot(aloop, cp3).status == "Accepted"


def test_handshake_refusals(csms_factory, aloop):
    csms = csms_factory()
    with pytest.raises(InvalidStatus) as exc:
        aloop.connect(csms.url, "CP1", subprotocols=("ocpp2.0.1",))
    assert exc.value.response.status_code == 400
    csms.wait_line("CP1 refused: no ocpp1.6 subprotocol", timeout=10)
    with pytest.raises(InvalidStatus) as exc:
        aloop.connect(csms.url.replace("/ocpp", "/other"), "CP1")
    assert exc.value.response.status_code == 404


def test_restart_keeps_port_and_history(csms_factory, aloop):
    port = free_port()
    csms = csms_factory(port=port)
    cp = aloop.connect(csms.url, "CP1")
    boot(aloop, cp)
    csms.restart()
    assert csms.url == "ws://127.0.0.1:%d/ocpp" % port
    aloop.run(asyncio.wait_for(cp.task, 10))   # the restart closed the old connection
    cp = aloop.connect(csms.url, "CP1")
    boot(aloop, cp)
    assert len(csms.calls("BootNotification", cp="CP1")) == 2
    assert csms.output.count(csms.output[0]) == 2   # two READY lines: same URL and control port


def run_demo(args, stdin_text=None, timeout=60):
    demo = subprocess.Popen([PY, "tools/demo.py"] + args, cwd=ROOT, stdin=subprocess.PIPE, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = demo.communicate(stdin_text, timeout=timeout)
    finally:
        if demo.poll() is None:
            demo.terminate()   # SIGTERM lets the demo stop the CSMS and sim it started
            try:
                demo.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.communicate()
    return subprocess.CompletedProcess(demo.args, demo.returncode, out)


def provision(state_dir):
    with open(os.path.join(state_dir, "provision.json")) as f:
        return json.load(f)


# The demo tests check the demo's own job (start, wire up, relay commands, stop), not the firmware's.
def test_demo_script_with_bundled_csms(tmp_path):
    state = str(tmp_path / "state")
    script = tmp_path / "demo.txt"
    script.write_text("# comment\nwait ^\\[csms\\] CSMS READY\nplug 20\nstatus\nbogus-command\nquit\n"
                      "status\n")
    r = run_demo(["--script", str(script), "--state", state])
    out = r.stdout
    assert "Commands:" in out and "Accepted tags: TAG1, DEMO" in out
    # firmware log lines may land between the echoed command and its answer
    assert re.search(r"> status\n(?:.*\n)*?status: pilot B, .*powered", out), out[-3000:]
    assert "error: unknown command 'bogus-command'" in out
    assert "no output line matched" not in out
    assert out.count("> status") == 1   # nothing runs after quit
    assert r.returncode == 1   # the bad command shows in the exit code
    url = re.search(r"CSMS READY url=(\S+) control=127\.0\.0\.1:(\d+)", out)
    sim_ctl = int(re.search(r"SIM READY control=127\.0\.0\.1:(\d+)", out).group(1))
    assert provision(state)["CentralSystemUrl"] == url.group(1)
    assert provision(state)["ChargeBoxId"] == "DEMO-CP1"
    for port in (int(url.group(2)), sim_ctl):   # both children were stopped
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_demo_against_external_csms(csms_factory, tmp_path):
    csms = csms_factory()
    state = str(tmp_path / "state")
    r = run_demo(["--csms", csms.url, "--id", "EXT-CP", "--password", "pw-123", "--script", "-",
                  "--state", state, "--wait-timeout", "1"], "status\ncsms Reset {}\nwait nothing-prints-this-line\n", timeout=90)
    assert "CSMS READY" not in r.stdout   # it did not start its own Central System
    assert "csms commands need the bundled Central System" in r.stdout
    assert "error: no output line matched /nothing-prints-this-line/" in r.stdout
    assert re.search(r"status: pilot A", r.stdout)
    assert r.returncode == 1
    assert provision(state)["CentralSystemUrl"] == csms.url
    assert provision(state)["ChargeBoxId"] == "EXT-CP"


def test_call_fails_fast_when_cp_leaves(csms_factory, aloop):
    csms = csms_factory()
    cp = aloop.connect(csms.url, "CP1")
    boot(aloop, cp)

    cp.leave_on_reset = True
    reply = csms.control({"cmd": "call", "cp": "CP1", "action": "Reset", "payload": {"type": "Hard"},
                          "timeout": 60}, timeout=20)
    assert not reply["ok"] and "disconnected before answering" in reply["error"]
