# The MQTT front end: the charger's state on a broker, commands from it, Home Assistant discovery, and the
# external current limit (load management, solar surplus) fed from a topic. Imported only when MqttUrl is set, so
# a charger without MQTT pays nothing for it (README "MQTT" has the topic reference).
#
# One supervisor task owns the connection, as mqtt_as's _keep_connected does: connect (bounded by lib.mqtt's
# timeout, all of it awaited), announce, serve until the connection ends or the settings change, back off, again.
# Nothing here is awaited by the charger: OCPP and the safety path never wait on the broker. A command arrives in
# lib.mqtt's reader task, is checked and applied there (the model's commands return at once) and its result is
# queued for the supervisor to publish.
#
# The charger is reached only through ModelPort (below): the snapshot, the commands and the change notification of
# the charger model (firmware/chargepoint.py), whose names are spelled in that one class.
import asyncio
import json
import time
from micropython import const

from firmware import config, log, store
from firmware import loadlimit as LL
from lib.mqtt import MQTTClient, MQTTError

_TAG = "mqtt"
_TICK_MS = const(1000)         # the supervisor looks at the clock this often (interval, solar delays, back-off)
_MIN_GAP_MS = const(1000)      # state publications on change: at most one per this
_BACKOFF_MIN_MS = const(2000)
_BACKOFF_MAX_MS = const(120000)
_STABLE_MS = const(60000)      # a connection that held this long starts the back-off from the minimum again
_RESULTS = const(4)            # results waiting to be published; the oldest goes when more come
_MAX_PACKET = const(384)       # incoming: commands and inputs are small; larger ones are refused unread
_KEEPALIVE_S = const(60)
_TIMEOUT_MS = const(10000)     # CONNACK, SUBACK, PUBACK, PINGRESP
_TAG_MAX = const(20)           # OCPP IdToken: CiString20
_DISC_FILE = "mqttdisc.json"   # which discovery documents are on the broker (to remove them later)


# ---- the edge: the charger model ---------------------------------------------------------------------------------

class ModelPort:
    """The charger model (firmware/chargepoint.py) as this front end uses it: the one class to change when the
    model's names change. Commands return (ok, reason)."""

    def __init__(self, model):
        self.m = model

    def version(self):
        return self.m.version

    async def changed(self, seen):
        return await self.m.changed(seen)

    def snapshot(self):
        return self.m.snapshot()

    def start(self, id_tag):
        return self.m.start(id_tag)

    def stop(self):
        return self.m.stop()

    def set_limit(self, amps):
        return self.m.set_limit(amps)

    def set_availability(self, operative):
        return self.m.set_availability(operative)

    def feed_limit(self, fn):
        """Hands the arbiter the load-management limit: fn(now_ms) -> 0.1 A or None, asked at every arbiter
        turn (it must be polled: a stale input falls back on time alone). False when the model cannot take it."""
        attach = getattr(self.m, "set_load_limit", None)
        if attach is None:
            return False
        attach(fn)
        return True


def state_doc(s, with_tag, load_a):
    """The document published on <base>/state from a model snapshot: flat, numbers always numbers (Home
    Assistant's templates read it), currents in A, energy in Wh."""
    se = s.get("session")
    link = s.get("link") or {}
    d = {"status": s["status"], "error_code": s["error_code"], "error_info": s.get("error_info"),
         "pilot": s["pilot"], "plugged": bool(s["plugged"]), "available": bool(s["available"]),
         "offered_a": round(s["offered_a"] or 0, 1), "current_a": [round(a or 0, 1) for a in s["current_a"]],
         "power_w": round(s["power_w"] or 0), "energy_wh": s["energy_wh"], "max_a": s["max_a"],
         "limit_a": s["limit_a"], "session": se is not None,
         "session_energy_wh": se["energy_wh"] if se else 0, "session_s": se["duration_s"] if se else 0,
         "transaction_id": se.get("transaction_id") if se else None,
         "cs_online": bool(link.get("online")), "cs_registered": bool(link.get("registered"))}
    if with_tag:
        d["id_tag"] = se["id_tag"] if se else None
    if load_a is not None:
        d["load_limit_a"] = load_a
    return d


# ---- settings ----------------------------------------------------------------------------------------------------

def node_id(base):
    """Home Assistant's node and object ids allow [a-zA-Z0-9_-] only: the base topic with the rest as _."""
    out = bytearray(base.encode())
    for i in range(len(out)):
        c = out[i]
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 45):
            out[i] = 95
    return out.decode()


def base_topic(cfg):
    base = cfg.get("MqttTopic")
    if base:
        return base
    ident = cfg.get("ChargeBoxId")
    if not ident:
        return "evse"
    # A charge box id may hold + or # (config checks only what breaks a URL): not in a topic
    return "evse/" + ident.replace("+", "_").replace("#", "_")


def load_limit(cfg):
    """The LoadLimit the settings ask for, None when LoadMode is off."""
    mode = cfg.get("LoadMode")
    if mode not in LL.MODES:
        return None
    return LL.LoadLimit(LL.MODES.index(mode), cfg.get("LoadFallback") * 10, stale_ms=cfg.get("LoadStale") * 1000,
                        fuse_da=cfg.get("LoadFuse") * 10, phases=cfg.get("LoadPhases"),
                        start_delay_ms=cfg.get("LoadStartDelay") * 1000,
                        stop_delay_ms=cfg.get("LoadStopDelay") * 1000)


def _tls(cfg):
    # A verifying context for the broker, built once per configuration (DESIGN §7: never an unverified TLS)
    ca = cfg.get("MqttCa")
    if not ca:
        raise MQTTError("mqtts:// needs MqttCa, the CA certificate that signed the broker's certificate")
    from lib import tls

    try:
        return tls.context(tls.certificates(ca)[:1])
    except ValueError as e:
        raise MQTTError("MqttCa: bad CA certificate (%s)" % e)


def _printable(text):
    for c in text:
        if not " " < c <= "~":
            return False
    return True


def _number(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v == v  # v == v: not NaN


# ---- the front end -----------------------------------------------------------------------------------------------

class MqttFront:
    """model: the charger model (ModelPort's interface); cfg: firmware.config.Config; state_dir: where the list of
    discovery documents on the broker is kept. run() is the supervisor task. device: (manufacturer, model) for
    Home Assistant's device block. min_gap_ms: the shortest time between two state publications on change.
    client: the MQTT client class (lib.mqtt.MQTTClient; tests pass a fake with its interface). keepalive_s: MQTT
    keepalive; a dead link is noticed within about twice that."""

    def __init__(self, model, cfg, state_dir, device=("MicroPython-EVSE", "MPY-AC-1"), min_gap_ms=_MIN_GAP_MS,
                 backoff_ms=(_BACKOFF_MIN_MS, _BACKOFF_MAX_MS), client=MQTTClient, keepalive_s=_KEEPALIVE_S):
        self.port = ModelPort(model)
        self._client_cls = client
        self.keepalive_s = keepalive_s
        self.cfg = cfg
        self.device = device
        self.min_gap_ms = min_gap_ms
        self.backoff_ms = backoff_ms
        self._disc_path = store.join(state_dir, _DISC_FILE)
        self._wake = asyncio.Event()
        self._results = []
        self._dirty = True
        self._reconf = True
        self._helpers = False
        self._last_pub = time.ticks_ms()
        self._load_shown = None  # the load limit (0.1 A) in the last state published
        self.client = None
        self.loadlimit = None
        self.state = "off"      # off | connecting | up | waiting (back-off after a failure)
        self.error = None       # why the last connection attempt or connection failed
        self.connects = 0       # successful connections
        self.commands = 0       # commands and inputs handled (accepted or refused)
        self._fed = self.port.feed_limit(self.limit_da)
        cfg.watch(self._on_config)

    # ---- what other parts ask ----

    def limit_da(self, now_ms):
        """The load-management limit for the arbiter (0.1 A; loadlimit.PAUSE_DA below 6 A), None when off."""
        ll = self.loadlimit
        return None if ll is None else ll.limit_da(now_ms)

    def _on_config(self, name):
        if name.startswith("Mqtt") or name.startswith("Load") or name == "ChargeBoxId":
            self._reconf = True
            self._wake.set()

    def _settings(self):
        self._reconf = False
        cfg = self.cfg
        self.client = None
        self.ctx = None
        self.loadlimit = load_limit(cfg)
        if self.loadlimit is not None and not self._fed:
            log.warn(_TAG, "LoadMode %s: the charger model takes no external limit, load management is inactive"
                     % cfg.get("LoadMode"))
        self._load_shown = None
        self.with_tag = cfg.get("MqttIdTag")
        self.discovery = cfg.get("MqttDiscovery")
        self.interval_ms = cfg.get("MqttInterval") * 1000
        url = cfg.get("MqttUrl")
        self.url = None
        if not url:
            return
        where = config.mqtt_url(url)
        if isinstance(where, str):  # config refuses such a value; a file edited by hand may still hold one
            self.error = "MqttUrl %s" % where
            log.warn(_TAG, self.error)
            return
        self.url = where
        base = self.base = base_topic(cfg)
        self.node = node_id(base)
        self.t_avail = base + "/availability"
        self.t_state = base + "/state"
        self.t_result = base + "/result"
        self._cmd = (base + "/cmd/").encode()  # bytes: compared with the incoming topic's memoryview
        self._input = (base + "/input/").encode()
        user = cfg.get("MqttUser") or None
        password = cfg.get("MqttPassword") or None
        if password is not None and user is None:
            self.error = "MqttPassword needs MqttUser"
            log.warn(_TAG, self.error)
            self.url = None
            return
        self.client = self._client_cls("evse-" + self.node, self._on_message, user=user, password=password,
                                 keepalive=self.keepalive_s, max_packet=_MAX_PACKET, timeout_ms=_TIMEOUT_MS)
        self.client.set_last_will(self.t_avail, "offline", qos=1, retain=True)

    # ---- the supervisor ----

    async def run(self):
        if not self._helpers:  # once: a supervisor that restarts run() must not double them
            self._helpers = True
            asyncio.create_task(self._watch_model())
            asyncio.create_task(self._tick())
        backoff = 0
        said = None
        while True:
            if self._reconf:
                self._settings()
                backoff = 0
            if self.url is None:
                self.state = "off"
                await self._idle()
                continue
            t0 = time.ticks_ms()
            try:
                await self._session()
            except Exception as e:  # MQTTError, and a bug or a MemoryError must not end the supervisor
                self.error = e.args[0] if isinstance(e, MQTTError) and e.args else repr(e)
            if self._reconf:
                continue
            lo, hi = self.backoff_ms
            stable = time.ticks_diff(time.ticks_ms(), t0) >= _STABLE_MS
            backoff = lo if not backoff or stable else min(backoff * 2, hi)
            if self.error != said:  # the same failure again and again is said once
                said = self.error
                log.warn(_TAG, "%s; trying again in %d ms and then backing off" % (self.error, backoff))
            self.state = "waiting"
            # up to 25 % jitter, so that chargers on one broker do not come back together
            await self._idle(backoff + (time.ticks_ms() & 0xFFFF) * backoff // 262144)

    async def _idle(self, ms=-1):
        # Waits until the settings change or ms have passed (ms < 0: only the settings); a change is seen within
        # a tick
        t0 = time.ticks_ms()
        while not self._reconf:
            left = _TICK_MS if ms < 0 else ms - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                return
            await asyncio.sleep_ms(min(left, _TICK_MS))

    async def _tick(self):
        while True:
            await asyncio.sleep_ms(_TICK_MS)
            ll = self.loadlimit
            if ll is not None and self._load_da(ll) != self._load_shown:
                self._dirty = True  # solar delays and stale inputs change the limit with no message
            self._wake.set()

    async def _watch_model(self):
        port = self.port
        v = port.version()
        while True:
            v = await port.changed(v)
            self._dirty = True
            self._wake.set()

    async def _session(self):
        c = self.client
        tls, host, port = self.url
        if tls and self.ctx is None:
            self.ctx = _tls(self.cfg)
        self.state = "connecting"
        await c.connect(host, port, ssl=self.ctx)
        try:
            self.connects += 1
            self.error = None
            log.info(_TAG, "connected to %s:%d as %s" % (host, port, self.base))
            asyncio.create_task(self._closed(c))
            await c.publish(self.t_avail, "online", qos=1, retain=True)
            await c.subscribe(self._cmd + b"+", 1)
            if self.loadlimit is not None:
                await c.subscribe(self._input + b"+", 0)
            await self._discovery(c)
            self.state = "up"
            self._dirty = True
            await self._serve(c)
        finally:
            if c.connected:
                if self._reconf:  # leaving on purpose: say so, as the will would have
                    try:
                        await c.publish(self.t_avail, "offline", qos=1, retain=True)
                    except MQTTError:
                        pass
                await c.disconnect()
        err = c.error
        if err is not None:
            raise err

    async def _closed(self, c):
        await c.wait_closed()
        self._wake.set()

    async def _serve(self, c):
        while c.connected and not self._reconf:
            self._wake.clear()
            while self._results:
                await c.publish(self.t_result, self._results.pop(0))
            now = time.ticks_ms()
            since = time.ticks_diff(now, self._last_pub)
            if (self._dirty and since >= self.min_gap_ms) or (self.interval_ms and since >= self.interval_ms):
                await self.publish_state(c)
            elif not self._results:
                await self._wake.wait()

    async def publish_state(self, c):
        self._dirty = False
        self._last_pub = time.ticks_ms()
        ll = self.loadlimit
        da = self._load_shown = None if ll is None else self._load_da(ll)
        doc = state_doc(self.port.snapshot(), self.with_tag, None if da is None else da / 10)
        await c.publish(self.t_state, json.dumps(doc), 0, True)

    def _load_da(self, ll):
        da = ll.limit_da(time.ticks_ms())
        return da if da >= LL.MIN_DA else 0  # a pause shows as 0 A

    # ---- Home Assistant discovery ----

    async def _discovery(self, c):
        """Publishes the discovery documents the settings offer and empties (retained "") those published
        earlier that are no longer offered, under this node or an earlier one (docs/decisions.md, MQTT front
        end). The list of what is on the broker is written to flash only when it changes."""
        if self.discovery:
            from firmware import mqttha
            want = mqttha.entities(self.with_tag, self.loadlimit is not None)
        else:
            mqttha = None
            want = []
        had = store.read_json(self._disc_path, None)
        if not isinstance(had, dict):
            had = {}
        old_node = had.get("node")
        old = had.get("e") or []
        for e in old:
            if old_node != self.node or e not in want:
                comp, _, obj = e.partition("/")
                await c.publish("homeassistant/%s/%s/%s/config" % (comp, old_node, obj), b"", 1, True)
        if mqttha is not None:
            snap = self.port.snapshot()
            fw = snap.get("firmware") or {}
            ident = self.cfg.get("ChargeBoxId") or self.node
            dev = {"ids": [self.node], "name": "EVSE " + ident, "mf": self.device[0], "mdl": self.device[1],
                   "sw": fw.get("version") or "?"}
            for e in want:
                comp, _, obj = e.partition("/")
                await c.publish("homeassistant/%s/%s/%s/config" % (comp, self.node, obj),
                                mqttha.document(e, self.base, self.node, dev, snap["max_a"]), 1, True)
        if old_node != (self.node if want else None) or old != want:
            store.write_json(self._disc_path, {"node": self.node, "e": want} if want else {})

    # ---- incoming: commands and load-management inputs ----

    def _on_message(self, topic, payload, retained):
        # lib.mqtt's reader task: topic and payload are views into its buffer, valid during this call only
        if topic is None:
            return
        for prefix in (self._cmd, self._input):
            n = len(prefix)
            if len(topic) > n and topic[:n] == prefix:
                break
        else:
            return
        self.commands += 1
        name = "?"
        try:
            name = str(topic[n:], "utf-8")
            if prefix is self._input:
                name = "input/" + name
            if retained:  # a retained command would run again at every reconnect (a stop at each one)
                ok, why = False, "retained message ignored: publish commands and inputs without the retain flag"
            elif payload is None:
                ok, why = False, "payload longer than %d bytes" % _MAX_PACKET
            elif prefix is self._input:
                ok, why = self._on_input(name[6:], bytes(payload))
                if ok:
                    return  # inputs are a stream: only a refusal is answered
            else:
                ok, why = self.command(name, bytes(payload))
        except Exception as e:  # an exception here would end the connection (lib.mqtt): answer it instead
            log.error(_TAG, "command %s failed: %r" % (name, e))
            ok, why = False, "internal error: %r" % (e,)
        if not ok:
            log.info(_TAG, "%s refused: %s" % (name, why))
        r = {"cmd": name, "ok": bool(ok)}
        if why:
            r["reason"] = why
        q = self._results
        if len(q) >= _RESULTS:
            q.pop(0)
        q.append(json.dumps(r))
        self._wake.set()

    def command(self, name, raw):
        """Checks a command (type, range, the charger's state) and hands it to the model: (ok, reason). A refused
        command changes nothing."""
        if not raw:  # how MQTT deletes a retained message: someone clearing one must not start or stop a session
            return False, "empty payload (how a retained message is deleted): not a command"
        try:
            v = json.loads(raw)
        except ValueError:
            return False, "payload is not JSON"
        s = self.port.snapshot()
        port = self.port
        if name == "start":
            if not isinstance(v, dict):
                return False, 'expected a JSON object: {} (free vend) or {"id_tag": "..."}'
            for k in v:
                if k != "id_tag":
                    return False, "unknown field %s" % k
            tag = v.get("id_tag")
            if tag is not None and not (isinstance(tag, str) and 0 < len(tag) <= _TAG_MAX and _printable(tag)):
                return False, "id_tag must be 1-%d printable characters without spaces" % _TAG_MAX
            if s["session"] is not None:
                return False, "a session is running already"
            if not s["available"]:
                return False, "the connector is unavailable"
            if s["status"] == "Faulted":
                return False, "the connector is faulted (%s)" % s["error_code"]
            return port.start(tag)
        if name == "stop":
            if v != {}:
                return False, "expected {}"
            if s["session"] is None:
                return False, "no session to stop"
            return port.stop()
        if name == "limit":
            if v is None:
                return port.set_limit(None)
            top = s["max_a"]
            if not _number(v):
                return False, "expected a number of amperes (0 pauses), or null to clear the limit"
            if v != 0 and not 6 <= v <= top:
                return False, "%s A: the limit must be 0 (pause) or 6-%d A" % (v, top)
            return port.set_limit(v)
        if name == "available":
            if not isinstance(v, bool):
                return False, "expected true (operative) or false (inoperative)"
            return port.set_availability(v)
        return False, "unknown command %s (start, stop, limit, available)" % name

    def _on_input(self, name, raw):
        ll = self.loadlimit
        if ll is None:
            return False, "LoadMode is off: no input is used"
        try:
            v = json.loads(raw)
        except ValueError:
            return False, "payload is not JSON"
        want = ("current", "grid", "surplus", "grid_power").index(name) if name in (
            "current", "grid", "surplus", "grid_power") else -1
        if want < 0:
            return False, "unknown input %s (current, grid, surplus, grid_power)" % name
        mode = (LL.FIXED, LL.LOAD, LL.SOLAR, LL.SOLAR)[want]
        if mode != ll.mode:
            return False, "LoadMode is %s: input/%s is for mode %s" % (LL.MODES[ll.mode], name, LL.MODES[mode])
        now = time.ticks_ms()
        if mode == LL.LOAD:
            if _number(v):
                v = [v]
            if not isinstance(v, list) or len(v) not in (1, 3) or not all(_number(a) and -1000 <= a <= 1000
                                                                           for a in v):
                return False, "expected the grid current per phase in A: [L1, L2, L3] (import +, export -)"
            if len(v) == 1 and ll.phases == 3:
                return False, "LoadPhases is 3: send [L1, L2, L3]"
            own = self.port.snapshot()["current_a"]
            g = [int(a * 10) for a in v] + [0, 0]
            o = [int((a or 0) * 10) for a in own] + [0, 0]  # a one-phase meter may give fewer, or None
            ll.grid(now, g[0], g[1], g[2], o[0], o[1], o[2])
        else:
            if not _number(v) or not -1000000 <= v <= 1000000:
                return False, "expected a number (%s)" % ("A" if mode == LL.FIXED else "W")
            if mode == LL.FIXED:
                if v < 0:
                    return False, "a current limit cannot be negative"
                ll.fixed(now, int(v * 10))
            elif name == "surplus":
                ll.surplus(now, int(v))
            else:
                ll.surplus(now, LL.surplus_w(int(v), int(self.port.snapshot()["power_w"] or 0)))
        if self._load_da(ll) != self._load_shown:
            self._dirty = True
            self._wake.set()
        return True, None


def start(model, cfg, state_dir, **kw):
    """Builds the front end and starts its supervisor task; the caller keeps the returned object."""
    front = MqttFront(model, cfg, state_dir, **kw)
    asyncio.create_task(front.run())
    return front
