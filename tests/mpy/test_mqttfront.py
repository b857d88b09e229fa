# firmware/mqttfront.py and firmware/mqttha.py with a fake charger model and a fake MQTT client (the interface of
# lib.mqtt.MQTTClient, recording what is published). The real broker: tests/integration/test_mqtt_front.py.
import asyncio
import gc
import json
import time
import tinytest
from firmware import config, loadlimit, mqttha, store
from firmware.config import Config
from firmware.mqttfront import MqttFront, state_doc, node_id, base_topic
from lib.mqtt import MQTTError

# ---- fakes --------------------------------------------------------------------------------------------------------

IDLE = {"status": "Available", "error_code": "NoError", "error_info": None, "pilot": "A", "plugged": False,
        "offered_a": 0.0, "current_a": [0.0, 0.0, 0.0], "power_w": 0.0, "energy_wh": 123456, "max_a": 16,
        "limit_a": None, "session": None, "link": {"online": True, "registered": True, "answer_age_s": 3},
        "wifi": {"state": "off", "ssid": "", "ip": "", "error": None},
        "firmware": {"version": "0.1.0", "slot": "a", "update": "Idle"}, "available": True}


class Model:
    """The charger model's interface (firmware/chargepoint.py), as a stand-in: commands change the snapshot."""

    def __init__(self, **changes):
        self.s = dict(IDLE)
        self.s.update(changes)
        self.version = 0
        self.ev = asyncio.Event()
        self.calls = []
        self.free_vend = False
        self.limit_fn = None

    def snapshot(self):
        return dict(self.s)

    async def changed(self, seen):
        while self.version == seen:
            self.ev.clear()
            await self.ev.wait()
        return self.version

    def set(self, **changes):
        self.s.update(changes)
        self.version += 1
        self.ev.set()

    def start(self, id_tag):
        self.calls.append(("start", id_tag))
        if id_tag is None and not self.free_vend:
            return False, "free vend is off"
        self.set(session={"id_tag": id_tag or "FreeVend", "start": 1000, "energy_wh": 0, "duration_s": 0,
                          "transaction_id": None}, status="Preparing")
        return True, None

    def stop(self):
        self.calls.append(("stop",))
        self.set(session=None, status="Finishing")
        return True, None

    def set_limit(self, amps):
        self.calls.append(("limit", amps))
        self.set(limit_a=amps)
        return True, None

    def set_availability(self, op):
        self.calls.append(("available", op))
        self.set(available=op, status="Available" if op else "Unavailable")
        return True, None

    def set_load_limit(self, fn):
        self.limit_fn = fn


class Client:
    """lib.mqtt.MQTTClient's interface over nothing: records publishes and subscriptions; the test plays the
    broker (refuse, deliver, drop)."""
    made = []
    refuse = None  # an MQTTError text: connect() raises it

    def __init__(self, client_id, callback, **kw):
        self.id = client_id
        self.cb = callback
        self.kw = kw
        self.will = None
        self.pubs = []
        self.subs = []
        self.connected = False
        self.error = None
        self.down = asyncio.Event()
        self.connects = 0
        Client.made.append(self)

    def set_last_will(self, topic, payload, qos=0, retain=False):
        self.will = (topic, payload, qos, retain)

    async def connect(self, host, port=0, ssl=None, server_hostname=None):
        await asyncio.sleep_ms(1)
        if Client.refuse:
            raise MQTTError(Client.refuse)
        self.where = (host, port, ssl)
        self.connected = True
        self.error = None
        self.down.clear()
        self.connects += 1

    def _check(self):
        if not self.connected:
            raise MQTTError("not connected")

    async def publish(self, topic, payload, qos=0, retain=False):
        self._check()
        await asyncio.sleep_ms(0)
        self.pubs.append((topic if isinstance(topic, str) else str(topic, "utf-8"),
                          payload if isinstance(payload, str) else str(bytes(payload), "utf-8"), qos, retain))

    async def subscribe(self, topic, qos=0):
        self._check()
        self.subs.append((bytes(topic), qos))
        return qos

    async def disconnect(self):
        self.connected = False
        self.down.set()

    async def wait_closed(self):
        await self.down.wait()
        return self.error

    def drop(self, why):
        self.connected = False
        self.error = MQTTError(why)
        self.down.set()

    def deliver(self, topic, payload, retained=False):
        self.cb(memoryview(topic.encode()), None if payload is None else memoryview(payload), retained)

    def on(self, topic):
        return [p for p in self.pubs if p[0] == topic]


def cfg_with(**settings):
    c = Config(tinytest.tempdir("mqttfront"))
    settings.setdefault("MqttUrl", "mqtt://127.0.0.1:1883")
    settings.setdefault("ChargeBoxId", "CP1")
    for k, v in settings.items():
        st, why = c.set_device(k, v)
        assert st in (config.ACCEPTED, config.REBOOT_REQUIRED), (k, v, why)
    return c


def front(model=None, **settings):
    gc.collect()  # the modules compiled from source leave a fragmented heap behind
    c = cfg_with(**settings)
    f = MqttFront(model or Model(), c, c._path.rsplit("/", 1)[0], client=Client, min_gap_ms=0, backoff_ms=(10, 40))
    f._settings()
    return f


async def until(fn, ms=3000, what=""):
    t0 = time.ticks_ms()
    while not fn():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep_ms(5)


# ---- Home Assistant's rules for a discovery document (abbreviations expanded as HA does) --------------------------
ABBR = {"stat_t": "state_topic", "cmd_t": "command_topic", "avty_t": "availability_topic", "uniq_id": "unique_id",
        "val_tpl": "value_template", "unit_of_meas": "unit_of_measurement", "dev_cla": "device_class",
        "stat_cla": "state_class", "ent_cat": "entity_category", "pl_prs": "payload_press", "pl_on": "payload_on",
        "pl_off": "payload_off", "dev": "device"}
DEV_ABBR = {"ids": "identifiers", "mf": "manufacturer", "mdl": "model", "sw": "sw_version", "name": "name"}
KNOWN = ("name", "min", "max", "step") + tuple(ABBR.values())


def expand(doc):
    d = {}
    for k, v in doc.items():
        d[ABBR.get(k, k)] = v
    if "device" in d:
        d["device"] = dict((DEV_ABBR[k], v) for k, v in d["device"].items())
    base = d.pop("~", None)
    for k, v in d.items():
        if k.endswith("topic") and isinstance(v, str):
            if v[:1] == "~":
                d[k] = base + v[1:]
            elif v[-1:] == "~":
                d[k] = v[:-1] + base
    return d


def check_ha(comp, doc, base):
    d = expand(doc)
    for k in d:
        assert k in KNOWN, "unknown key %s in %s" % (k, comp)
    assert d["unique_id"] and d["name"], d
    assert d["availability_topic"] == base + "/availability", d
    dev = d["device"]
    assert dev["identifiers"] and dev["manufacturer"] and dev["model"] and dev["sw_version"] and dev["name"], dev
    if comp in ("sensor", "binary_sensor", "switch", "number"):
        assert d["state_topic"] == base + "/state" and "value_template" in d, d
    if comp in ("button", "switch", "number"):
        assert d["command_topic"].startswith(base + "/cmd/"), d
    if comp == "button":
        assert "state_topic" not in d
    if d.get("device_class") == "energy":
        assert d["state_class"] == "total_increasing" and d["unit_of_measurement"] == "kWh", d
    return d


# ---- the state document ------------------------------------------------------------------------------------------

def test_state_document_per_snapshot():
    idle = state_doc(IDLE, False, None)
    assert idle == {"status": "Available", "error_code": "NoError", "error_info": None, "pilot": "A",
                    "plugged": False, "available": True, "offered_a": 0.0, "current_a": [0.0, 0.0, 0.0],
                    "power_w": 0, "energy_wh": 123456, "max_a": 16, "limit_a": None, "session": False,
                    "session_energy_wh": 0, "session_s": 0, "transaction_id": None, "cs_online": True,
                    "cs_registered": True}, idle
    charging = dict(IDLE, status="Charging", pilot="C", plugged=True, offered_a=16.0, current_a=[15.94, 15.96, 16.01],
                    power_w=11012.6, energy_wh=125000, limit_a=10,
                    session={"id_tag": "TAG1", "start": 1, "energy_wh": 1544, "duration_s": 600, "transaction_id": 7},
                    link={"online": False, "registered": True, "answer_age_s": None})
    d = state_doc(charging, False, 8.5)
    assert (d["status"], d["pilot"], d["plugged"], d["current_a"], d["power_w"]) == (
        "Charging", "C", True, [15.9, 16.0, 16.0], 11013), d
    assert (d["session"], d["session_energy_wh"], d["session_s"], d["transaction_id"]) == (True, 1544, 600, 7)
    assert (d["limit_a"], d["load_limit_a"], d["cs_online"]) == (10, 8.5, False)
    assert "id_tag" not in d  # personal data: only when MqttIdTag is on
    assert state_doc(charging, True, None)["id_tag"] == "TAG1" and "load_limit_a" not in state_doc(charging, True, None)
    assert state_doc(IDLE, True, None)["id_tag"] is None
    # a meter that has not answered yet: numbers stay numbers
    d = state_doc(dict(IDLE, power_w=None, current_a=[None, None, None], offered_a=None), False, None)
    assert (d["power_w"], d["current_a"], d["offered_a"]) == (0, [0, 0, 0], 0), d


async def test_published_state_is_retained_json_on_the_base_topic():
    m = Model()
    f = front(m, MqttTopic="home/garage/evse")
    c = f.client
    await c.connect("h", 1)
    await f.publish_state(c)
    m.set(status="Preparing", plugged=True, pilot="B")
    await f.publish_state(c)
    pubs = c.on("home/garage/evse/state")
    assert [(p[2], p[3]) for p in pubs] == [(0, True), (0, True)]
    assert json.loads(pubs[0][1]) == state_doc(IDLE, False, None)
    assert json.loads(pubs[1][1])["status"] == "Preparing" and json.loads(pubs[1][1])["plugged"] is True


def test_base_topic_and_node_id():
    assert base_topic(cfg_with()) == "evse/CP1"
    assert base_topic(cfg_with(ChargeBoxId="A+B")) == "evse/A_B"  # a charge box id may hold a wildcard
    assert base_topic(cfg_with(MqttTopic="garage/wallbox")) == "garage/wallbox"
    assert node_id("garage/wall box.1-x") == "garage_wall_box_1-x"


def test_config_keys_are_checked():
    c = cfg_with()
    for k, v in (("MqttUrl", "http://broker"), ("MqttUrl", "mqtt://"), ("MqttUrl", "mqtt://host:0"),
                 ("MqttUrl", "mqtt://host:99999"), ("MqttUrl", "mqtt://user:pw@host"), ("MqttUrl", "mqtt://a b"),
                 ("MqttTopic", "evse/+/x"), ("MqttTopic", "evse/#"), ("MqttTopic", "/evse"), ("MqttTopic", "evse/"),
                 ("MqttTopic", "a//b"), ("MqttTopic", "$SYS/x"), ("MqttTopic", "x" * 65), ("MqttInterval", -1),
                 ("MqttInterval", 3601), ("LoadMode", "eco"), ("LoadPhases", 2), ("LoadPhases", 0),
                 ("LoadFuse", 5), ("LoadFallback", 81), ("LoadStale", 1), ("MqttDiscovery", "maybe")):
        st, why = c.set_device(k, v)
        assert st == config.REJECTED and why.startswith(k), (k, v, st, why)
    assert c.get("MqttUrl") == "mqtt://127.0.0.1:1883" and c.get("LoadMode") == "off"
    for k, v in (("MqttUrl", "mqtts://broker.lan:8884/"), ("MqttUrl", ""), ("MqttTopic", "home/ev-1"),
                 ("LoadMode", "solar"), ("LoadPhases", 1), ("MqttPassword", "pw"), ("MqttInterval", 0)):
        assert c.set_device(k, v)[0] == config.ACCEPTED, (k, v)
    assert config.mqtt_url("mqtts://broker.lan/") == (True, "broker.lan", 8883)
    assert config.mqtt_url("mqtt://10.0.0.2:1884") == (False, "10.0.0.2", 1884)


# ---- discovery -------------------------------------------------------------------------------------------------

def test_discovery_documents_meet_home_assistants_rules():
    dev = {"ids": ["evse_CP1"], "name": "EVSE CP1", "mf": "M", "mdl": "X", "sw": "0.1.0"}
    want = mqttha.entities(True, True)
    assert len(want) == 17
    seen = set()
    for e in want:
        comp = e.split("/")[0]
        text = mqttha.document(e, "evse/CP1", "evse_CP1", dev, 32)
        d = check_ha(comp, json.loads(text), "evse/CP1")
        assert d["unique_id"] not in seen
        seen.add(d["unique_id"])
        if e == "sensor/energy":
            assert (d["device_class"], d["unit_of_measurement"]) == ("energy", "kWh")
        if e == "sensor/power":
            assert (d["unit_of_measurement"], d["device_class"]) == ("W", "power")
        if e == "number/limit":
            assert (d["min"], d["max"], d["command_topic"]) == (0, 32, "evse/CP1/cmd/limit")
        if e == "binary_sensor/plugged":
            assert d["device_class"] == "plug"
    comps = [e.split("/")[0] for e in want]
    for c in ("sensor", "binary_sensor", "button", "number", "switch"):
        assert c in comps
    assert "sensor/id_tag" not in mqttha.entities(False, True) and "sensor/load_limit" not in mqttha.entities(True,
                                                                                                               False)
    tinytest.raises(ValueError, mqttha.document, "sensor/nope", "b", "n", dev, 16)


async def test_discovery_published_retained_and_removed_on_reconfiguration():
    f = front(MqttTopic="ev/one")
    c = f.client
    await c.connect("h", 1)
    await f._discovery(c)
    cfgs = [p for p in c.pubs if p[0].startswith("homeassistant/")]
    assert len(cfgs) == 15 and all(p[2] == 1 and p[3] for p in cfgs), cfgs
    assert "homeassistant/sensor/ev_one/power/config" in [p[0] for p in cfgs]
    assert not [p for p in cfgs if p[1] == ""]
    # the same settings again: the documents again (a broker without persistence lost them), nothing removed
    c.pubs = []
    await f._discovery(c)
    assert len(c.pubs) == 15 and not [p for p in c.pubs if p[1] == ""]
    # the id tag sensor offered, then no longer: its config is emptied, retained
    f.cfg.set_device("MqttIdTag", True)
    f._settings()
    c = f.client
    await c.connect("h", 1)
    await f._discovery(c)
    assert "homeassistant/sensor/ev_one/id_tag/config" in [p[0] for p in c.pubs if p[1]]
    f.cfg.set_device("MqttIdTag", False)
    f._settings()
    c = f.client
    await c.connect("h", 1)
    await f._discovery(c)
    assert [p for p in c.pubs if p[1] == ""] == [("homeassistant/sensor/ev_one/id_tag/config", "", 1, True)]
    # a new base topic: every document of the old node goes, the new node's come
    f.cfg.set_device("MqttTopic", "ev/two")
    f._settings()
    c = f.client
    await c.connect("h", 1)
    await f._discovery(c)
    gone = [p[0] for p in c.pubs if p[1] == ""]
    assert len(gone) == 15 and all("/ev_one/" in t for t in gone), gone
    assert len([p for p in c.pubs if "/ev_two/" in p[0] and p[1]]) == 15
    # discovery switched off: all removed, and only once (the list on flash is empty afterwards)
    f.cfg.set_device("MqttDiscovery", False)
    f._settings()
    c = f.client
    await c.connect("h", 1)
    await f._discovery(c)
    assert len(c.pubs) == 15 and all(p[1] == "" and p[3] and "/ev_two/" in p[0] for p in c.pubs)
    c.pubs = []
    await f._discovery(c)
    assert c.pubs == []


# ---- commands ----------------------------------------------------------------------------------------------------

def results(f):
    out = [json.loads(r) for r in f._results]
    f._results = []
    return out


def test_bad_commands_are_refused_and_change_nothing():
    m = Model()
    f = front(m)
    c = f.client
    before = m.snapshot()
    cases = (
        ("start", b"{nope", "payload is not JSON"),
        ("start", b"[1]", "expected a JSON object"),
        ("start", b'{"id_tag": 5}', "id_tag must be"),
        ("start", b'{"id_tag": ""}', "id_tag must be"),
        ("start", b'{"id_tag": "ABCDEFGHIJKLMNOPQRSTU"}', "id_tag must be"),  # 21 characters
        ("start", b'{"id_tag": "TAG 1"}', "id_tag must be"),
        ("start", b'{"idtag": "TAG1"}', "unknown field idtag"),
        ("stop", b"", "empty payload (how a retained message is deleted): not a command"),
        ("start", b"", "empty payload"),
        ("limit", b"", "empty payload"),
        ("stop", b"{}", "no session to stop"),
        ("stop", b"[]", "expected {}"),
        ("limit", b"abc", "payload is not JSON"),
        ("limit", b'"16"', "expected a number"),
        ("limit", b"true", "expected a number"),
        ("limit", b"5", "must be 0 (pause) or 6-16 A"),
        ("limit", b"16.5", "must be 0 (pause) or 6-16 A"),
        ("limit", b"-1", "must be 0 (pause) or 6-16 A"),
        ("limit", b"1e400", "must be 0 (pause) or 6-16 A"),
        ("available", b'"yes"', "expected true"),
        ("available", b"1", "expected true"),
        ("reset", b"{}", "unknown command reset"),
    )
    for name, payload, why in cases:
        c.deliver("evse/CP1/cmd/" + name, payload)
        r = results(f)
        assert len(r) == 1 and r[0]["cmd"] == name and r[0]["ok"] is False and why in r[0]["reason"], (name, r)
    # wrong state
    m.set(available=False, status="Unavailable")
    c.deliver("evse/CP1/cmd/start", b'{"id_tag": "TAG1"}')
    assert results(f)[0]["reason"] == "the connector is unavailable"
    m.set(available=True, status="Faulted", error_code="GroundFailure")
    c.deliver("evse/CP1/cmd/start", b"{}")
    assert results(f)[0]["reason"] == "the connector is faulted (GroundFailure)"
    m.set(status="Charging", error_code="NoError", session={"id_tag": "X", "start": 0, "energy_wh": 0,
                                                            "duration_s": 0, "transaction_id": 1})
    c.deliver("evse/CP1/cmd/start", b'{"id_tag": "TAG1"}')
    assert results(f)[0]["reason"] == "a session is running already"
    # retained and oversized messages are answered, never acted on
    c.deliver("evse/CP1/cmd/stop", b"{}", retained=True)
    assert "retained message ignored" in results(f)[0]["reason"]
    c.deliver("evse/CP1/cmd/stop", None)
    assert results(f)[0]["reason"] == "payload longer than 384 bytes"
    c.deliver("evse/CP1/cmd/limit", b"\xff\xfe")  # not UTF-8, not JSON
    assert results(f)[0]["ok"] is False
    c.deliver("evse/CP1/cmd/\xff", b"{}")
    assert results(f)[0]["ok"] is False
    assert m.calls == [] and m.snapshot()["limit_a"] is None and before["session"] is None
    c.deliver("evse/CP2/cmd/stop", b"{}")  # another charger's topic: not ours
    c.deliver("evse/CP1/cmd", b"{}")
    assert f._results == [] and m.calls == []


def test_good_commands_reach_the_model_and_are_answered():
    m = Model()
    f = front(m)
    c = f.client
    c.deliver("evse/CP1/cmd/start", b"{}")
    assert results(f) == [{"cmd": "start", "ok": False, "reason": "free vend is off"}]  # the model's own answer
    c.deliver("evse/CP1/cmd/start", b'{"id_tag": "TAG1"}')
    assert results(f) == [{"cmd": "start", "ok": True}]
    c.deliver("evse/CP1/cmd/limit", b"10")
    c.deliver("evse/CP1/cmd/limit", b"0")
    c.deliver("evse/CP1/cmd/limit", b"16.0")
    c.deliver("evse/CP1/cmd/limit", b"null")
    assert [r["ok"] for r in results(f)] == [True] * 4
    c.deliver("evse/CP1/cmd/stop", b"{}")
    assert results(f) == [{"cmd": "stop", "ok": True}]
    c.deliver("evse/CP1/cmd/available", b"false")
    c.deliver("evse/CP1/cmd/available", b"true")
    m.free_vend = True
    c.deliver("evse/CP1/cmd/start", b"{}")
    assert [r["ok"] for r in results(f)] == [True] * 3
    assert m.calls == [("start", None), ("start", "TAG1"), ("limit", 10), ("limit", 0), ("limit", 16.0),
                       ("limit", None), ("stop",), ("available", False), ("available", True), ("start", None)]
    # a flood keeps only the newest results
    for i in range(10):
        c.deliver("evse/CP1/cmd/limit", b"3")
    assert len(f._results) == 4


# ---- load management -------------------------------------------------------------------------------------------

def test_load_modes_through_the_front_end():
    now = time.ticks_ms()
    m = Model(current_a=[10.0, 10.0, 10.0], power_w=6900.0)
    f = front(m, LoadMode="load", LoadFuse=25, LoadFallback=6, LoadStale=30)
    c = f.client
    assert m.limit_fn is not None and m.limit_fn(now) == 60  # before any input: the fallback
    c.deliver("evse/CP1/input/grid", b"[20, 15.5, 12]")  # house 10/5.5/2 A besides our 10 A per phase
    assert f._results == [] and m.limit_fn(time.ticks_ms()) == 150  # 25 - (20 - 10), the busiest phase
    c.deliver("evse/CP1/input/grid", b"[30, 30, 30]")
    assert m.limit_fn(time.ticks_ms()) == loadlimit.PAUSE_DA  # 5 A of room: a pause, never a stop
    assert m.limit_fn(time.ticks_add(time.ticks_ms(), 30000)) == 60  # stale: the fallback
    for payload, why in ((b"[1, 2]", "expected the grid current"), (b"12", "LoadPhases is 3"),
                         (b'{"l1": 3}', "expected the grid current"), (b"[1, 2, 2000]", "expected the grid"),
                         (b"x", "not JSON")):
        c.deliver("evse/CP1/input/grid", payload)
        r = results(f)
        assert r and r[0]["cmd"] == "input/grid" and why in r[0]["reason"], (payload, r)
    c.deliver("evse/CP1/input/surplus", b"5000")
    assert "LoadMode is load: input/surplus is for mode solar" in results(f)[0]["reason"]
    c.deliver("evse/CP1/input/nope", b"1")
    assert "unknown input nope" in results(f)[0]["reason"]
    assert m.limit_fn(time.ticks_ms()) == loadlimit.PAUSE_DA  # nothing refused changed the limit

    m = Model(power_w=1500.0)
    f = front(m, LoadMode="solar", LoadStartDelay=0, LoadStopDelay=0, LoadFallback=0)
    c = f.client
    c.deliver("evse/CP1/input/surplus", b"6000")
    assert f._results == [] and m.limit_fn(time.ticks_ms()) == 86  # 6000 W / (230 V x 3)
    c.deliver("evse/CP1/input/grid_power", b"-2640")  # exporting 2640 W while we draw 1500 W: 4140 W for the EV
    assert m.limit_fn(time.ticks_ms()) == 60
    c.deliver("evse/CP1/input/current", b"10")
    assert "is for mode fixed" in results(f)[0]["reason"]

    m = Model()
    f = front(m, LoadMode="fixed", LoadFallback=8)
    c = f.client
    c.deliver("evse/CP1/input/current", b"12.5")
    assert m.limit_fn(time.ticks_ms()) == 125
    c.deliver("evse/CP1/input/current", b"-3")
    assert "cannot be negative" in results(f)[0]["reason"] and m.limit_fn(time.ticks_ms()) == 125
    f.cfg.set_device("LoadMode", "off")
    f._settings()
    assert m.limit_fn(time.ticks_ms()) is None  # off: no external limit
    f.client.deliver("evse/CP1/input/current", b"10")
    assert "LoadMode is off" in results(f)[0]["reason"]


# ---- the supervisor ----------------------------------------------------------------------------------------------

async def test_supervisor_connects_serves_reconnects_and_reconfigures():
    Client.made = []
    Client.refuse = "TCP connection to 127.0.0.1:1883 refused (no broker listening?)"
    m = Model()
    c = cfg_with(MqttUser="evse", MqttPassword="pw", MqttInterval=0)
    f = MqttFront(m, c, c._path.rsplit("/", 1)[0], client=Client, min_gap_ms=0, backoff_ms=(10, 40))
    task = asyncio.create_task(f.run())
    await until(lambda: f.state == "waiting", what="a refused connection")
    assert "refused" in f.error and f.connects == 0
    Client.refuse = None
    await until(lambda: f.state == "up", what="connected")
    cl = f.client
    assert cl.kw["user"] == "evse" and cl.kw["password"] == "pw" and cl.id == "evse-evse_CP1"
    assert cl.will == ("evse/CP1/availability", "offline", 1, True)
    assert cl.pubs[0] == ("evse/CP1/availability", "online", 1, True)
    assert cl.subs == [(b"evse/CP1/cmd/+", 1)]  # no input topic without a LoadMode
    await until(lambda: cl.on("evse/CP1/state"), what="state")
    # a change in the model is published
    m.set(status="Preparing", plugged=True)
    await until(lambda: json.loads(cl.on("evse/CP1/state")[-1][1])["status"] == "Preparing", what="new state")
    # a command's result goes to the result topic
    cl.deliver("evse/CP1/cmd/limit", b"8")
    await until(lambda: cl.on("evse/CP1/result"), what="result")
    assert json.loads(cl.on("evse/CP1/result")[0][1]) == {"cmd": "limit", "ok": True}
    await until(lambda: json.loads(cl.on("evse/CP1/state")[-1][1])["limit_a"] == 8, what="limit shown")
    # the connection ends: back off, connect again, announce again
    cl.drop("connection closed by the broker")
    await until(lambda: cl.connects == 2 and f.state == "up", what="reconnected")
    assert f.connects == 2 and cl.on("evse/CP1/availability")[-1][1] == "online"
    # a changed setting: offline said on purpose, a new client with the new settings
    c.set_device("LoadMode", "fixed")
    # connected, then subscribed: wait for both
    await until(lambda: len(Client.made) == 2 and Client.made[-1].connected and len(Client.made[-1].subs) == 2,
                what="reconfigured")
    assert cl.on("evse/CP1/availability")[-1][1] == "offline" and not cl.connected
    new = Client.made[-1]
    assert new.subs == [(b"evse/CP1/cmd/+", 1), (b"evse/CP1/input/+", 0)]
    # MQTT switched off: offline, disconnected, idle
    c.set_device("MqttUrl", "")
    await until(lambda: f.state == "off" and not new.connected, what="off")
    assert new.on("evse/CP1/availability")[-1][1] == "offline"
    task.cancel()


async def test_state_is_republished_at_the_interval_and_rate_limited_on_change():
    Client.made = []
    m = Model()
    c = cfg_with(MqttInterval=1, MqttDiscovery=False)
    f = MqttFront(m, c, c._path.rsplit("/", 1)[0], client=Client, min_gap_ms=400, backoff_ms=(10, 40))
    task = asyncio.create_task(f.run())
    await until(lambda: f.state == "up" and f.client.on("evse/CP1/state"), what="up")
    cl = f.client
    t0 = time.ticks_ms()
    for i in range(20):  # 20 changes in 200 ms: one or two publications, never twenty
        m.set(power_w=float(i))
        await asyncio.sleep_ms(10)
    await until(lambda: json.loads(cl.on("evse/CP1/state")[-1][1])["power_w"] == 19, what="last change")
    assert len(cl.on("evse/CP1/state")) <= 3, len(cl.on("evse/CP1/state"))
    n = len(cl.on("evse/CP1/state"))
    await until(lambda: len(cl.on("evse/CP1/state")) > n, 2500, "the interval publication")
    assert time.ticks_diff(time.ticks_ms(), t0) >= 900
    task.cancel()


tinytest.run(globals())
