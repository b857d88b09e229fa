"""The Central System as the harness drives it.

CsmsProc: tools/csms.py (the demo Central System, on the `ocpp` package) as a child process, driven over its
control socket; what the tests use, blocking.
Csms: a Central System in this process (asyncio, websockets) that answers at once, books every transaction (its
start, MeterValues and stop, resends recognised) and keeps every frame with its arrival time; what `make bench`
times against and what `make torture` counts with: no control-socket hop in a round trip, and a ledger to check
"every transaction once, in order". Both offer what the scenario steps (steps.py) use: mark(), wait_for(),
request(), transaction_id().
"""
import asyncio
import base64
import datetime
import http
import itertools
import json
import os
import shutil
import tempfile
import time

import websockets
from websockets.asyncio.server import serve

from harness import PY, TOOLS
from harness.proc import ChildProcess, json_request, wait_until


class CallErrorReply(AssertionError, RuntimeError):
    """The charge point answered a CALL with a CALLERROR (or the CSMS could not deliver it)."""


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CallTimeout(Exception):
    pass


class Conn:
    def __init__(self, cp, ws):
        self.cp = cp
        self.ws = ws
        self.waiting = {}       # uid -> future of the answer frame
        self.strays = []        # answers whose uid we never sent (e.g. "-1" CALLERRORs to malformed frames)
        self.closed = asyncio.Event()


class Csms:
    """A Central System in this process that answers the charge point's CALLs at once and records every frame.

    Transactions: StartTransaction gets a fresh id; self.tx[id] keeps start, meter values and stop in arrival
    order, so torture can check "once, in order". tag_status answers Authorize and StartTransaction.
    A StartTransaction identical to one already booked (same charger, connector, idTag, meterStart and
    timestamp) is the charger's resend after it lost our answer: it gets the same id back, as a production
    Central System does, and is counted in tx[id]["resends"]; so are a MeterValues or StopTransaction identical
    to one already booked."""

    is_async = True

    def __init__(self, port=0):
        self.port = port
        self.server = None
        self.conns = {}
        self.frames = []        # (monotonic t, cp, "in"|"out", parsed frame or None, raw text)
        self.keep_frames = True
        self.tag_status = "Accepted"
        self.tx = {}
        self.tx_order = []      # (cp, action, payload) of every transaction message, as received
        self.next_tx = 1
        self.start_ids = {}     # identity of a booked StartTransaction -> its transactionId
        self.incoming = {}      # action -> count
        self.on_frame = None    # callback(t, cp, frame) for incoming CALLs
        self.connected_evt = {}
        self.boot_interval = 120    # the charger's own HeartbeatInterval default, so its default timing holds
        self.password = None        # when set, HTTP Basic auth "<cp>:<password>" is required (401 otherwise)
        self.refused = 0            # connections refused with 401

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ocpp" % self.port

    async def start(self):
        self.server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"],
                                  ping_interval=None, max_size=None, compression=None,
                                  process_request=self._check_auth)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        """Central System down: the listener closes and every connection drops."""
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.conns.values()):
            await conn.ws.close()
        await self.server.wait_closed()
        self.server = None

    def evt(self, cp):
        return self.connected_evt.setdefault(cp, asyncio.Event())

    def _check_auth(self, connection, request):
        if self.password is None:
            return None
        cp = request.path.rstrip("/").rsplit("/", 1)[-1]
        want = "Basic " + base64.b64encode(("%s:%s" % (cp, self.password)).encode()).decode()
        if request.headers.get("Authorization") == want:
            return None
        self.refused += 1
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")

    async def wait_connected(self, cp, timeout=60):
        await asyncio.wait_for(self.evt(cp).wait(), timeout)
        return self.conns[cp]

    async def _handler(self, ws):
        cp = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        conn = Conn(cp, ws)
        self.conns[cp] = conn
        self.evt(cp).set()
        try:
            async for text in ws:
                await self._frame(conn, text)
        except websockets.ConnectionClosed:
            pass
        finally:
            conn.closed.set()
            for fut in conn.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            if self.conns.get(cp) is conn:
                del self.conns[cp]
                self.evt(cp).clear()

    def _log(self, cp, direction, frame, text):
        if self.keep_frames:
            self.frames.append((time.monotonic(), cp, direction, frame, text))

    async def _frame(self, conn, text):
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        self._log(conn.cp, "in", frame, text)
        if not isinstance(frame, list) or len(frame) < 3:
            conn.strays.append(frame)
            return
        if frame[0] == 2 and len(frame) == 4:
            action = frame[2]
            self.incoming[action] = self.incoming.get(action, 0) + 1
            if self.on_frame:
                self.on_frame(time.monotonic(), conn.cp, frame)
            reply = self._answer(conn.cp, action, frame[3])
            out = [3, frame[1], reply] if isinstance(reply, dict) else [4, frame[1], reply[0], reply[1], {}]
            text = json.dumps(out)
            self._log(conn.cp, "out", out, text)
            try:
                await conn.ws.send(text)
            except websockets.ConnectionClosed:
                pass
            return
        fut = conn.waiting.pop(frame[1], None)
        if fut is not None and not fut.done():
            fut.set_result(frame)
        else:
            conn.strays.append(frame)

    def _answer(self, cp, action, p):
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now_iso(), "interval": self.boot_interval}
        if action == "Heartbeat":
            return {"currentTime": now_iso()}
        if action == "Authorize":
            return {"idTagInfo": {"status": self.tag_status}}
        if action == "StartTransaction":
            key = (cp, p.get("connectorId"), p.get("idTag"), p.get("meterStart"), p.get("timestamp"))
            tid = self.start_ids.get(key)
            if tid is not None:
                self.tx[tid]["resends"] += 1
                return {"transactionId": tid, "idTagInfo": {"status": self.tag_status}}
            tid = self.next_tx
            self.next_tx += 1
            self.start_ids[key] = tid
            self.tx[tid] = {"cp": cp, "start": p, "meter": [], "stop": None, "stops": 0, "resends": 0,
                            "t": time.monotonic()}
            self.tx_order.append((cp, action, p, tid))
            return {"transactionId": tid, "idTagInfo": {"status": self.tag_status}}
        if action == "StopTransaction":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and t["stop"] == p:
                t["resends"] += 1  # the same Stop again: its answer was lost, it is not a second Stop
            elif t is not None:
                t["stops"] += 1
                t["stop"] = p
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            else:
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "MeterValues":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and p in t["meter"]:
                t["resends"] += 1  # identical values again after a lost answer: booked once
            else:
                if t is not None:
                    t["meter"].append(p)
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            return {}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        if action in ("StatusNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            return {}
        return ("NotImplemented", "no handler for %s" % action)

    _uids = itertools.count(1)

    async def call(self, cp, action, payload, timeout=30):
        """(answer frame, round trip s). The round trip runs from just before the send to the answer's arrival."""
        return await self.send_wait(cp, json.dumps([2, "b%d" % next(self._uids), action, payload]), timeout)

    async def send_wait(self, cp, text, timeout=30, uid=None):
        conn = self.conns.get(cp)
        if conn is None:
            raise ConnectionError("%s is not connected" % cp)
        if uid is None:
            uid = json.loads(text)[1]
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a dropped link fails unawaited ones
        conn.waiting[uid] = fut
        t0 = time.perf_counter()
        self._log(cp, "out", None, text)
        await conn.ws.send(text)
        try:
            frame = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.waiting.pop(uid, None)
            raise CallTimeout("%s: no answer within %s s" % (text[:80], timeout))
        return frame, time.perf_counter() - t0

    async def send_raw(self, cp, data):
        conn = self.conns.get(cp)
        if conn is None:
            raise ConnectionError("%s is not connected" % cp)
        self._log(cp, "out", None, data if isinstance(data, str) else "<%d bytes>" % len(data))
        await conn.ws.send(data)

    async def drop(self, cp):
        conn = self.conns.get(cp)
        if conn is not None:
            await conn.ws.close()
            await conn.closed.wait()

    def calls_in(self, cp=None, action=None, since_t=0.0):
        return [(t, f) for t, c, d, f, _ in self.frames
                if d == "in" and t >= since_t and (cp is None or c == cp) and isinstance(f, list) and len(f) == 4
                and f[0] == 2 and (action is None or f[2] == action)]

    async def wait_call(self, cp, action, since_t=0.0, timeout=30, where=None):
        deadline = time.monotonic() + timeout
        while True:
            hits = [(t, f) for t, f in self.calls_in(cp, action, since_t) if where is None or where(f[3])]
            if hits:
                return hits[0]
            if time.monotonic() > deadline:
                raise TimeoutError("no %s from %s within %s s" % (action, cp, timeout))
            await asyncio.sleep(0.02)

    # --- what the scenario steps use (CsmsProc has the same) --------------------------------------------------

    def mark(self):
        """A point from which wait_for(since=...) and transaction_id(since=...) look."""
        return time.monotonic()

    async def wait_for(self, action, cp=None, since=0.0, where=None, timeout=30):
        """The payload of the first CALL of action from cp after mark since (where: a predicate on it)."""
        return (await self.wait_call(cp, action, since_t=since, timeout=timeout, where=where))[1][3]

    async def request(self, cp, action, payload, timeout=30):
        """The CALLRESULT payload of a CALL; CallErrorReply on a CALLERROR."""
        frame, _ = await self.call(cp, action, payload, timeout)
        if frame[0] != 3:
            raise CallErrorReply("%s to %s: %r" % (action, cp, frame))
        return frame[2]

    async def transaction_id(self, cp, since=0.0, timeout=15):
        """The id of the newest transaction of cp booked after mark since."""
        deadline = time.monotonic() + timeout
        while True:
            ids = [tid for tid, t in self.tx.items() if t["cp"] == cp and t["t"] >= since]
            if ids:
                return max(ids)
            if time.monotonic() > deadline:
                raise TimeoutError("no transaction of %s booked within %s s" % (cp, timeout))
            await asyncio.sleep(0.02)


class CsmsProc(ChildProcess):
    """tools/csms.py as a child process. messages() accumulates across restarts (indexes stay valid)."""

    name = "csms"
    is_async = False
    ready_pattern = r"^CSMS READY url=(\S+) control=127\.0\.0\.1:(\d+)"

    def __init__(self, port=None, tls=False, pki=None, auth=None, tags=("TAG1",), boot_status="Accepted",
                 interval=300, extra_args=()):
        super().__init__()
        # Port 0 on the first start: the tool binds a free port itself and names it in its ready line (a port
        # picked here and freed again could be taken by a parallel test before the tool binds it). A restart
        # keeps both: the charger knows the WebSocket port, the test the control port.
        self.port = port or 0
        self.control_port = 0
        self.tls = tls
        self.pki = pki
        self.auth = dict(auth or {})
        self.tags = tuple(tags)
        self.boot_status = boot_status
        self.interval = interval
        self.extra_args = tuple(extra_args)
        self._tmp = tempfile.mkdtemp(prefix="csms-")
        self.log_path = os.path.join(self._tmp, "csms.jsonl")
        self._msgs = []
        self._since = 0
        if tls and pki is None:
            from pki import make_pki
            self.pki = make_pki(os.path.join(self._tmp, "pki"))

    @property
    def url(self):
        return "%s://127.0.0.1:%d/ocpp" % ("wss" if self.tls else "ws", self.port)

    @property
    def cafile(self):
        return self.pki["ca"] if self.pki else None

    @property
    def output(self):
        return self.lines

    def argv(self):
        argv = [PY, os.path.join(TOOLS, "csms.py"), "--port", str(self.port),
                "--control", str(self.control_port), "--log", self.log_path,
                "--tags", ",".join(self.tags), "--boot-status", self.boot_status,
                "--interval", str(self.interval)]
        if self.tls:
            argv += ["--certfile", self.pki["server_cert"], "--keyfile", self.pki["server_key"]]
        if self.auth:
            argv += ["--auth"] + ["%s:%s" % kv for kv in self.auth.items()]
        return argv + list(self.extra_args)

    def start(self):
        self._since = 0
        ready = self._spawn(self.argv())
        self.port = int(ready.group(1).rsplit(":", 1)[1].split("/", 1)[0])
        self.control_port = int(ready.group(2))
        return self

    def stop(self):
        if self.running:
            try:
                self._fetch()
            except (OSError, ValueError):
                pass   # the output tail tells what happened to it
        self._terminate(10)

    def close(self):
        """stop() and delete the temporary files (log, generated PKI)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def restart(self):
        self.stop()
        return self.start()

    def control(self, cmd, timeout=None):
        wait = float(cmd.get("timeout", 10)) + 10 if timeout is None else timeout
        return json_request(self.control_port, cmd, wait)

    def _fetch(self):
        reply = self.control({"cmd": "messages", "since": self._since})
        self._msgs.extend(reply["messages"])
        self._since = reply["next"]

    def messages(self, cp=None):
        """Every frame logged since the first start: dicts t, cp, dir ("in"/"out"), raw, msg."""
        if self.running:
            self._fetch()
        return [m for m in self._msgs if cp is None or m["cp"] == cp]

    def calls(self, action, cp=None, direction="in", since=0):
        """Payloads of the CALLs with this action (index since into messages() to skip older ones)."""
        out = []
        for m in self.messages(cp)[since:]:
            msg = m["msg"]
            if (m["dir"] == direction and msg and len(msg) > 3 and msg[0] == 2 and msg[2] == action):
                out.append(msg[3])
        return out

    def wait_for(self, action, cp=None, direction="in", count=1, timeout=30, where=None, since=0):
        """The count-th payload of a matching CALL (where: predicate on the payload), waiting for it."""
        def found():
            hits = [p for p in self.calls(action, cp, direction, since) if where is None or where(p)]
            return (hits[count - 1],) if len(hits) >= count else None  # a tuple: {} payloads are falsy

        desc = "%d x %s (%s, cp=%s)" % (count, action, direction, cp)
        return wait_until(lambda: found(), timeout, 0.1, desc)[0]

    def connected(self):
        return self.control({"cmd": "connected"})["cps"]

    def call(self, cp, action, payload, timeout=30, validate=True):
        """The CALLRESULT payload; raises CallErrorReply on a CALLERROR, timeout or invalid result.
        validate=False sends a payload the ocpp package's schemas would refuse."""
        reply = self.control({"cmd": "call", "cp": cp, "action": action, "payload": payload,
                              "timeout": timeout, "validate": validate})
        if not reply["ok"]:
            raise CallErrorReply("%s to %s: %s" % (action, cp, reply["error"]))
        return reply["result"]

    request = call

    def mark(self):
        """A point from which wait_for(since=...) and transaction_id(since=...) look: an index into messages()."""
        return len(self.messages())

    def transaction_id(self, cp, since=0, timeout=15):
        """The transactionId the Central System gave in its StartTransaction answer after index since."""
        def find():
            msgs = self.messages(cp)[since:]
            start_ids = {m["msg"][1] for m in msgs if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
                         and m["msg"][2] == "StartTransaction"}
            for m in msgs:
                if m["dir"] == "out" and m["msg"] and m["msg"][0] == 3 and m["msg"][1] in start_ids:
                    return (m["msg"][2]["transactionId"],)
            return None
        return wait_until(find, timeout, msg="StartTransaction answer")[0]

    def raw(self, cp, text, timeout=10):
        reply = self.control({"cmd": "raw", "cp": cp, "text": text, "timeout": timeout})
        assert reply["ok"], reply
        return reply["reply"]

    def set(self, **settings):
        reply = self.control(dict(settings, cmd="set"))
        assert reply["ok"], reply
        return reply
