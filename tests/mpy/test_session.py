# firmware.ocpp.session on the unix port with a fake WebSocket: answers to our CALLs are checked, and a link
# that stops answering is dropped whatever WebSocketPingInterval is (issue 9 items 14 and 18). The dispatch of
# incoming frames (frame in -> answer frame and after-action out) is driven without a socket (issue 10).
import asyncio
import json
import sys
import time
import tinytest
from firmware.config import Config
from firmware.ocpp import core, rpc
from firmware.ocpp.session import Session, Offline


class FakeWS:
    # What session.call needs of lib.ws.WS; records the frames sent. block: send() never returns (a full TCP
    # window).
    def __init__(self, block=False):
        self.sent = []
        self.block = block
        self.last_rx_ms = time.ticks_ms()

    async def send(self, data, text=False):
        if self.block:
            await asyncio.Event().wait()
        await asyncio.sleep_ms(0)  # a real socket yields while it drains: other tasks may run meanwhile
        self.sent.append(json.loads(bytes(data)))

    async def ping(self):
        pass


def _session(ws=None):
    s = Session(Config(tinytest.tempdir("session")), {})
    s.ws = ws or FakeWS()
    return s, s.ws


async def _call_answered(action, answer_text, payload=None):
    """session.call(action) while the Central System answers with answer_text % uid; returns the result
    or the exception raised."""
    s, ws = _session()

    async def answer():
        while not ws.sent:
            await asyncio.sleep_ms(1)
        await s._on_frame(ws, answer_text % ws.sent[-1][1])

    t = asyncio.create_task(answer())
    try:
        return await s.call(action, payload or {}, 2000)
    except Exception as e:
        return e
    finally:
        await t


TAG_OK = '{"status":"Accepted"}'


async def test_malformed_answers_are_bad_answers():
    cases = (
        ("StartTransaction", '[3,"%s",[]]', "FormationViolation", "StartTransaction answer: payload is not an object"),
        ("StartTransaction", '[3,"%s",{"idTagInfo":' + TAG_OK + ',"transactionId":"7"}]', "TypeConstraintViolation",
         "transactionId must be an integer"),
        ("StartTransaction", '[3,"%s",{"transactionId":7}]', "OccurenceConstraintViolation", "idTagInfo"),
        ("StartTransaction", '[3,"%s",{"idTagInfo":{"status":"Fine"},"transactionId":7}]',
         "PropertyConstraintViolation", "idTagInfo: status"),
        ("StartTransaction", '[3,"%s",{"idTagInfo":[],"transactionId":7}]', "TypeConstraintViolation", "idTagInfo"),
        ("Authorize", '[3,"%s",{"idTagInfo":{"status":"Accepted","parentIdTag":7}}]', "TypeConstraintViolation",
         "idTagInfo: parentIdTag"),
        ("Authorize", '[3,"%s",{}]', "OccurenceConstraintViolation", "idTagInfo"),
        ("StopTransaction", '[3,"%s",{"idTagInfo":{"status":1}}]', "TypeConstraintViolation", "status"),
        ("BootNotification", '[3,"%s",{"status":"Accepted","currentTime":"2026-01-01T00:00:00Z","interval":"60"}]',
         "TypeConstraintViolation", "interval"),
        ("BootNotification", '[3,"%s",{"status":"OK","currentTime":"2026-01-01T00:00:00Z","interval":60}]',
         "PropertyConstraintViolation", "status"),
        ("Heartbeat", '[3,"%s",{}]', "OccurenceConstraintViolation", "currentTime"),
        ("Heartbeat", '[3,"%s",{"currentTime":"yesterday"}]', "PropertyConstraintViolation", "currentTime"),
        ("DataTransfer", '[3,"%s",{"status":"Accepted","data":{"a":1}}]', "TypeConstraintViolation", "data"),
        ("StatusNotification", '[3,"%s",[]]', "FormationViolation", "not an object"),
        ("MeterValues", '[3,"%s","ok"]', "FormationViolation", "not an object"),
        ("FirmwareStatusNotification", '[3,"%s",7]', "FormationViolation", "not an object"),
        ("DiagnosticsStatusNotification", '[3,"%s",[{}]]', "FormationViolation", "not an object"),
    )
    for action, text, code, words in cases:
        e = await _call_answered(action, text)
        assert isinstance(e, rpc.BadAnswer), (action, text, e)
        assert isinstance(e, rpc.CallError)  # every caller already treats it as a failed attempt
        assert e.code == code and words in e.description, (action, e.code, e.description)


async def test_well_formed_answers_pass_unknown_fields_ignored():
    got = await _call_answered("StartTransaction", '[3,"%s",{"idTagInfo":{"status":"Accepted","vendor":1},'
                                                   '"transactionId":7,"extra":true}]')
    assert got == {"idTagInfo": {"status": "Accepted", "vendor": 1}, "transactionId": 7, "extra": True}, got
    assert await _call_answered("StatusNotification", '[3,"%s",{}]') == {}
    assert await _call_answered("MeterValues", '[3,"%s",null]') == {}  # OCPP-J: null payload = {}
    got = await _call_answered("BootNotification", '[3,"%s",{"status":"Pending","currentTime":'
                                                   '"2026-01-01T00:00:00Z","interval":0}]')
    assert got["status"] == "Pending"
    e = await _call_answered("Heartbeat", '[4,"%s","NotImplemented","no",{}]')
    assert type(e) is rpc.CallError and e.code == "NotImplemented"


async def test_no_answer_and_nothing_received_is_a_dead_link_not_a_timeout():
    s, ws = _session()
    ws.last_rx_ms = time.ticks_add(time.ticks_ms(), -1000)
    e = await _raised(s.call("StartTransaction", {}, 50))
    assert isinstance(e, Offline), repr(e)  # offline: the transaction queue does not count an attempt
    assert s._down.is_set() and not s.online
    assert isinstance(await _raised(s.call("Heartbeat", {}, 50)), Offline)  # nothing more goes out on it
    assert len(ws.sent) == 1


async def test_a_call_that_cannot_be_written_is_a_dead_link():
    s, ws = _session(FakeWS(block=True))
    alive = asyncio.create_task(_traffic(ws))  # pings still arrive, but our frame never leaves
    try:
        e = await _raised(asyncio.wait_for_ms(s.call("Heartbeat", {}, 50), 2000))
    finally:
        alive.cancel()
    assert isinstance(e, Offline) and s._down.is_set()


async def _traffic(ws):
    while True:
        ws.last_rx_ms = time.ticks_ms()
        await asyncio.sleep_ms(5)


async def _raised(coro):
    try:
        await coro
    except Exception as e:
        return e
    raise AssertionError("no exception")


async def test_unanswered_calls_in_a_row_drop_the_link_while_pings_arrive():
    s, ws = _session()
    alive = asyncio.create_task(_traffic(ws))
    try:
        for _ in range(2):
            assert isinstance(await _raised(s.call("Heartbeat", {}, 30)), asyncio.TimeoutError)
        assert not s._down.is_set()
        # an answer in between starts the count again

        async def answer():
            while len(ws.sent) < 3:
                await asyncio.sleep_ms(1)
            await s._on_frame(ws, '[3,"%s",{"currentTime":"2026-01-01T00:00:00Z"}]' % ws.sent[-1][1])

        t = asyncio.create_task(answer())
        await s.call("Heartbeat", {}, 1000)
        await t
        for _ in range(2):
            assert isinstance(await _raised(s.call("Heartbeat", {}, 30)), asyncio.TimeoutError)
        assert not s._down.is_set()
        e = await _raised(s.call("Heartbeat", {}, 30))
        assert isinstance(e, asyncio.TimeoutError)  # the CS lived and did not answer: a failed attempt
        assert s._down.is_set() and not s.online  # and the link is renewed
    finally:
        alive.cancel()


async def test_silence_is_probed_with_a_heartbeat_whatever_the_intervals():
    s, ws = _session()
    s.cfg.set("WebSocketPingInterval", "0")
    s.cfg.set("HeartbeatInterval", "86400")
    now = time.ticks_ms()
    ws.last_rx_ms = time.ticks_add(now, -121000)  # nothing received for 121 s
    s.last_send_ms = time.ticks_add(now, -121000)
    keep = asyncio.create_task(s._keepalive())
    try:
        for _ in range(300):
            if ws.sent:
                break
            await asyncio.sleep_ms(10)
        assert ws.sent and ws.sent[0][2] == "Heartbeat", ws.sent
    finally:
        keep.cancel()
        await asyncio.sleep_ms(0)


async def test_no_traffic_at_all_drops_the_link():
    s, ws = _session()
    s.cfg.set("WebSocketPingInterval", "0")
    ws.last_rx_ms = time.ticks_add(time.ticks_ms(), -(120 + 2 * 30 + 1) * 1000)
    await asyncio.wait_for_ms(s._keepalive(), 3000)  # returns: run() then reconnects
    assert s._down.is_set()


# ---- dispatch: frame in -> (answer frame, after-action) out, no socket ------------------------------------
class _Charger:
    # What core.register and localauth.register take from the charger, as far as these tests reach.
    def __init__(self, cfg=None, auth=None):
        self.cfg = cfg
        self.auth = auth
        self.reboots = []  # (kind, frames the session had sent when the reboot began)
        self.ws = None

    async def reboot(self, kind):
        self.reboots.append((kind, len(self.ws.sent) if self.ws else None))


class _Board:
    def __init__(self, state_dir):
        self.state_dir = state_dir


class _Evse:
    operative = True


def _core_session():
    s, ws = _session()
    app = _Charger(s.cfg)
    app.ws = ws
    app.board = _Board(tinytest.tempdir("session-core"))  # Core restores the availability from there
    app.evse = _Evse()
    c = core.register(s, app)
    c.reboot = app.reboot  # the reset sequence itself needs a whole charger: record its start instead
    return s, ws, app


async def test_dispatch_unknown_action_is_not_implemented_an_unhandled_16_action_not_supported():
    s, ws, app = _core_session()
    reply, after = await s.dispatch('[2,"a1","FlyToTheMoon",{}]')
    assert reply[:3] == [4, "a1", "NotImplemented"] and after is None, reply
    reply, after = await s.dispatch('[2,"a2","GetDiagnostics",{"location":"ftp://example.org/"}]')
    assert reply[:3] == [4, "a2", "NotSupported"] and after is None, reply
    assert await s.dispatch('[2,"a3","Reset",{"type":"Soft"}]') != (None, None)  # a handled one is answered
    assert ws.sent == []  # dispatch itself sends nothing


async def test_dispatch_malformed_frames_get_their_callerror():
    s, ws, app = _core_session()
    long_id = "x" * 37
    cases = (
        ('not json', "-1", rpc.FORMATION),
        ('{"a":1}', "-1", rpc.FORMATION),  # not an array
        ('[2,"m1"]', "-1", rpc.FORMATION),  # too short to be a CALL
        ('[2,"%s","Reset",{"type":"Soft"}]' % long_id, "-1", rpc.FORMATION),  # uniqueId over 36: not usable
        ('[2,"m2",7,{}]', "m2", rpc.FORMATION),  # the action is not a string
        ('[2,"m3","Reset",[]]', "m3", rpc.FORMATION),  # the payload is not an object
        ('[2,"m4","Reset",{"type":"Soft","when":1}]', "m4", rpc.FORMATION),  # a field the schema lacks
        ('[2,"m5","Reset",{}]', "m5", rpc.OCCURENCE),
        ('[2,"m6","Reset",{"type":1}]', "m6", rpc.TYPE),
        ('[2,"m7","Reset",{"type":"Medium"}]', "m7", rpc.PROPERTY),
        ('[2,"m8","ChangeAvailability",{"connectorId":-1,"type":"Operative"}]', "m8", rpc.PROPERTY),
    )
    for text, uid, code in cases:
        reply, after = await s.dispatch(text)
        assert reply is not None and reply[0] == 4 and reply[1] == uid and reply[2] == code, (text, reply)
        assert isinstance(reply[3], str) and reply[4] == {} and after is None, (text, reply)
    assert app.reboots == []  # no handler ran
    assert await s.dispatch('[5,"m9","x",{}]') == (None, None)  # an unknown message type is ignored


async def test_dispatch_handler_exception_is_internal_error():
    s, ws = _session()

    def broken(p):
        return p["missing"]  # a bug: KeyError

    async def broken_later(p):
        await asyncio.sleep_ms(1)
        raise ValueError("bug")

    s.handle("Reset", (), broken)
    s.handle("UnlockConnector", (), broken_later)
    for action in ("Reset", "UnlockConnector"):
        reply, after = await s.dispatch('[2,"e1","%s",{}]' % action)
        assert reply == [4, "e1", "InternalError", action + " failed", {}] and after is None, reply
    # the CALLERROR a handler raises on purpose is passed on as it is
    s.handle("Reset", (), _raise_type)
    reply, _ = await s.dispatch('[2,"e2","Reset",{}]')
    assert reply == [4, "e2", "TypeConstraintViolation", "key entries must be strings", {}], reply


def _raise_type(p):
    raise rpc.CallError(rpc.TYPE, "key entries must be strings")


async def test_dispatch_loads_a_lazy_profile_on_first_use_once():
    from firmware.ocpp.auth import Auth

    s, ws = _session()
    name = "firmware.ocpp.localauth"
    assert name not in sys.modules  # nothing here imported it yet
    app = _Charger(s.cfg, Auth(s.cfg, tinytest.tempdir("session-auth")))
    loads = []

    def loader():
        loads.append(1)
        __import__(name, None, None, ("register",)).register(s, app)

    s.lazy(("ClearCache", "GetLocalListVersion", "SendLocalList"), loader)
    assert loads == [] and name not in sys.modules and "ClearCache" not in s.handlers
    reply, after = await s.dispatch('[2,"l1","GetLocalListVersion",{}]')
    assert reply == [3, "l1", {"listVersion": 0}] and after is None, reply
    assert loads == [1] and name in sys.modules
    app.auth.remember("A", {"status": "Accepted"})
    reply, _ = await s.dispatch('[2,"l2","ClearCache",{}]')  # the same profile: not loaded again
    assert reply == [3, "l2", {"status": "Accepted"}] and loads == [1], reply
    assert app.auth.lookup("A") is None
    reply, _ = await s.dispatch('[2,"l3","SendLocalList",{"listVersion":2,"updateType":"Full"}]')
    assert reply == [3, "l3", {"status": "Accepted"}] and loads == [1], reply


async def test_a_profile_that_finds_no_memory_to_load_fails_the_call_and_loads_later():
    s, ws = _session()
    tries = []

    def loader():
        tries.append(1)
        if len(tries) == 1:
            raise MemoryError("memory allocation failed, allocating 1280 bytes")
        s.handle("GetLocalListVersion", (), lambda p: {"listVersion": 7})
        s.handle("ClearCache", (), lambda p: {"status": "Accepted"})

    s.lazy(("ClearCache", "GetLocalListVersion"), loader)
    reply, after = await s.dispatch('[2,"m1","GetLocalListVersion",{}]')
    assert reply[:3] == [4, "m1", "InternalError"] and "memory" in reply[3] and after is None, reply
    reply, _ = await s.dispatch('[2,"m2","GetLocalListVersion",{}]')  # still lazy: loaded now
    assert reply == [3, "m2", {"listVersion": 7}] and tries == [1, 1], reply
    reply, _ = await s.dispatch('[2,"m3","ClearCache",{}]')  # the same profile: not loaded again
    assert reply == [3, "m3", {"status": "Accepted"}] and tries == [1, 1], reply


async def test_a_profile_loaded_in_two_parts_lets_the_loop_run_between_them():
    s, ws = _session()
    steps = [0]
    seen = []

    async def other_task():  # what the rest of the firmware does meanwhile: one count per loop step
        while True:
            steps[0] += 1
            await asyncio.sleep_ms(0)

    def ahead():
        seen.append(("ahead", steps[0]))

    def loader():
        seen.append(("loader", steps[0]))
        s.handle("GetLocalListVersion", (), lambda p: {"listVersion": 3})

    t = asyncio.create_task(other_task())
    await asyncio.sleep_ms(0)
    s.lazy(("GetLocalListVersion",), loader, ahead)
    reply, _ = await s.dispatch('[2,"a1","GetLocalListVersion",{}]')
    t.cancel()
    assert reply == [3, "a1", {"listVersion": 3}], reply
    (a, n_ahead), (b, n_loader) = seen
    assert (a, b) == ("ahead", "loader") and n_loader > n_ahead, seen  # the other task ran in between
    reply, _ = await s.dispatch('[2,"a2","GetLocalListVersion",{}]')
    assert reply == [3, "a2", {"listVersion": 3}] and len(seen) == 2, seen  # loaded once


async def test_dispatch_returns_the_after_action_which_runs_once_the_answer_is_out():
    s, ws, app = _core_session()
    reply, after = await s.dispatch('[2,"r1","Reset",{"type":"Soft"}]')
    assert reply == [3, "r1", {"status": "Accepted"}], reply
    assert after is not None and app.reboots == []  # dispatch only hands it over
    await after()
    assert app.reboots == [("Soft", 0)]
    # on the socket path the answer is written first, then the after-action starts
    await s._on_frame(ws, '[2,"r2","Reset",{"type":"Hard"}]')
    assert ws.sent == [[3, "r2", {"status": "Accepted"}]]
    for _ in range(100):
        if len(app.reboots) > 1:
            break
        await asyncio.sleep_ms(1)
    assert app.reboots[1] == ("Hard", 1), app.reboots


async def test_dispatch_answers_nothing_while_rejected_and_hands_answers_to_call():
    s, ws, app = _core_session()
    s.boot_status = "Rejected"  # OCPP 1.6 §4.2: silent until the retry interval
    assert await s.dispatch('[2,"q1","Reset",{"type":"Soft"}]') == (None, None)
    assert await s.dispatch('[2,"q2","FlyToTheMoon",{}]') == (None, None)
    s.boot_status = "Accepted"

    async def answer():
        while not ws.sent:
            await asyncio.sleep_ms(1)
        got = await s.dispatch('[3,"%s",{"currentTime":"2026-01-01T00:00:00Z"}]' % ws.sent[-1][1])
        assert got == (None, None)

    t = asyncio.create_task(answer())
    assert await s.call("Heartbeat", {}, 2000) == {"currentTime": "2026-01-01T00:00:00Z"}
    await t
    assert await s.dispatch('[3,"nobody-waits",{}]') == (None, None)  # logged and dropped


tinytest.run(globals())
