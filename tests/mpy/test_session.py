# firmware.ocpp.session on the unix port with a fake WebSocket: answers to our CALLs are checked, and a link
# that stops answering is dropped whatever WebSocketPingInterval is (issue 9 items 14 and 18).
import asyncio
import json
import time
import tinytest
from firmware.config import Config
from firmware.ocpp import rpc
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


tinytest.run(globals())
