# The OCPP-J session: keeps one WebSocket to the Central System alive, registers with BootNotification,
# sends Heartbeats, and carries CALLs both ways with at most one outstanding CALL per direction (OCPP-J §4.1.1).
# Reconnect policy lives here, the protocol in lib/ws.py (as umqtt.robust sits on umqtt.simple).
import asyncio
import os
import sys
import time
from micropython import const

from firmware import clock, log
from firmware.jsonbuf import JsonBuf
from firmware.ocpp import rpc
from firmware.ocpp.rpc import ENUM, INT, OBJ, STR, TIME
from lib import ws as wslib

_TAG = "ocpp"
_REJECTED_RETRY_S = 60  # BootNotification interval 0 means "CP chooses" (digest §2.2)
_OUT_BUF = 6144  # the largest outgoing frame encoded without a heap allocation (GetConfiguration 3.4 KB, 4.5 KB
# with every list key at its longest: tests/mpy/test_config.py)
# Dead-link deadlines that hold whatever WebSocketPingInterval is (docs/decisions.md, Reconnect)
_UNANSWERED_MAX = const(3)  # CALLs in a row without an answer (other traffic arriving) before a reconnect
# A frame this long (a local list, a charging profile) is decoded, validated and handled in three loop steps,
# not one: on an ESP32 each of them takes milliseconds (docs/decisions.md, Loop stalls).
_BIG_FRAME = const(400)
_PROBE_MS = const(120000)  # nothing received for this long (or HeartbeatInterval if shorter): a Heartbeat probes



class Offline(Exception):
    pass


# Every 1.6 action (all profiles): an action listed here without a handler is NotSupported, anything
# else NotImplemented (OCPP-J Table 7).
_ACTIONS_16 = ("CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache",
               "ClearChargingProfile", "DataTransfer", "GetCompositeSchedule", "GetConfiguration",
               "GetDiagnostics", "GetLocalListVersion", "RemoteStartTransaction", "RemoteStopTransaction",
               "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile", "TriggerMessage",
               "UnlockConnector", "UpdateFirmware")


class Session:
    def __init__(self, cfg, boot_fields):
        self.cfg = cfg
        self.boot_fields = boot_fields
        self.handlers = {}  # action -> (spec, fn); fn(payload) -> response or (response, after_coro_fn)
        self._lazy = {}  # action -> loader that registers the handlers of a profile loaded on first use
        self.ws = None
        self.registered = False  # BootNotification Accepted since this boot
        self.boot_status = None  # last BootNotification status: Accepted | Pending | Rejected
        self.on_accepted = None  # called (sync) after every (re)connect once registered
        self.last_send_ms = time.ticks_ms()
        self._down = asyncio.Event()
        self._call_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._out = JsonBuf(_OUT_BUF)  # used only under _send_lock: one frame at a time
        self._ssl = None  # the verifying TLS context for wss://, built once and reused (lib/tls.py)
        if cfg.get("CentralSystemCa") and cfg.get("CentralSystemUrl").startswith("wss"):
            try:
                self._tls()  # built now, while the heap is whole
            except wslib.WSError as e:
                log.error(_TAG, str(e))
        self._reply = None
        self._reply_evt = asyncio.Event()
        self._wait_uid = None
        self._prefix = "%04x" % (int.from_bytes(os.urandom(2), "big"))  # ids never repeat across reboots
        self._counter = 0
        self._boot_now = asyncio.Event()  # a TriggerMessage(BootNotification) cuts the Pending wait short
        self._sent = False  # the CALL being awaited was written out in full
        self._unanswered = 0  # our CALLs in a row that timed out while other traffic still arrived
        self._failures = 0  # connects in a row that failed (kept when the task is restarted)
        self._plain_warned = False  # the password-over-ws:// warning, once per boot

    @property
    def online(self):
        return self.ws is not None and not self._down.is_set()

    def handle(self, action, spec, fn):
        self.handlers[action] = (spec, fn)

    def lazy(self, actions, loader, ahead=None):
        """The handlers of actions are registered by loader() on the first CALL of one of them; ahead(), if given,
        runs a loop step before it (a first part of the profile's code to import: each import is a long step)."""
        lazy = (loader, ahead)
        for action in actions:
            self._lazy[action] = lazy

    # ---- outgoing CALLs ------------------------------------------------------------------------------
    async def notify(self, action, payload):
        """One CALL whose failure the caller only logs (a notification, not a transaction message: those are
        queued by TxQueue). Returns the answer, or None when it failed (logged with the action's name)."""
        try:
            return await self.call(action, payload)
        except Exception as e:
            log.warn(_TAG, "%s failed: %r" % (action, e))
            return None

    async def call(self, action, payload, timeout_ms=None):
        """Sends one CALL and returns the CALLRESULT payload, checked against the action's answer schema.
        Raises Offline (no link, or the link found dead while waiting: not a failed attempt), rpc.CallError
        (a CALLERROR; rpc.BadAnswer, a subclass, for a malformed answer) or asyncio.TimeoutError (no answer
        while the link lives). Callers queue behind each other: one outstanding CALL per direction."""
        if timeout_ms is None:
            timeout_ms = self.cfg.get("ResponseTimeout") * 1000
        async with self._call_lock:
            ws = self.ws
            if ws is None or self._down.is_set():
                raise Offline()
            self._counter += 1
            uid = "%s-%d" % (self._prefix, self._counter)
            self._reply = None
            self._reply_evt.clear()
            self._wait_uid = uid
            self._sent = False
            start = time.ticks_ms()
            try:
                await asyncio.wait_for_ms(self._exchange(ws, [rpc.CALL, uid, action, payload]), timeout_ms)
            except asyncio.TimeoutError:
                self._no_answer(ws, action, start, timeout_ms)
            except wslib.WSError:  # the link closed under the send: the reader reports why
                raise Offline()
            finally:
                self._wait_uid = None
            reply = self._reply
        if reply is None:
            raise Offline()
        self._unanswered = 0
        if reply[0] == rpc.ERROR:
            raise rpc.CallError(reply[1], reply[2])
        return _checked(action, reply[1])

    async def _exchange(self, ws, frame):
        await self._send(ws, frame)
        self._sent = True
        self.last_send_ms = time.ticks_ms()
        await self._reply_evt.wait()

    def _no_answer(self, ws, action, start, timeout_ms):
        # Raises what a CALL without an answer means. Nothing at all received since it went out (a link that
        # stalls mid-frame, a frozen server) or a CALL that could not even be written: the link is dead, and
        # that is being offline, not a failed attempt. Answers missing while other frames arrive: a timeout,
        # and after a few in a row the Central System's end of the session is taken for stuck.
        if ws is not self.ws or self._down.is_set():
            raise Offline()
        if not self._sent or time.ticks_diff(ws.last_rx_ms, start) < 0:
            self.link_dead("no answer to %s within %d ms and nothing else received" % (action, timeout_ms))
            raise Offline()
        self._unanswered += 1
        if self._unanswered >= _UNANSWERED_MAX:
            self.link_dead("%d CALLs in a row unanswered" % self._unanswered)
        raise asyncio.TimeoutError()

    def link_dead(self, why):
        """Drops the connection: run() closes it and reconnects after the back-off."""
        log.warn(_TAG, why + ", reconnecting")
        self._down.set()

    async def _send(self, ws, frame):
        # acquire()/release() rather than "async with": two coroutine objects fewer per frame (garbage that
        # brings app.py's next collection closer)
        lock = self._send_lock
        await lock.acquire()
        try:
            data = self._out.dump(frame)  # an answer that writes its own JSON goes straight into the buffer
            if log.level <= log.DEBUG:  # formatting a copy of every frame is not free
                log.debug(_TAG, "-> %s" % bytes(data))
            await ws.send(data, True)
        finally:
            lock.release()

    # ---- incoming frames -----------------------------------------------------------------------------
    async def _reader(self, ws):
        try:
            while True:
                try:
                    text = await ws.recv()
                except wslib.WSNoRoom as e:
                    # Too big to hold, so its id is unknown: answered like unparsable JSON (docs/decisions.md)
                    log.warn(_TAG, str(e))
                    await self._send(ws, [rpc.ERROR, "-1", rpc.FORMATION, str(e), {}])
                    continue
                if log.level <= log.DEBUG:
                    log.debug(_TAG, "<- " + str(text))
                await self._on_frame(ws, text)
        except wslib.WSError as e:
            log.warn(_TAG, "connection lost: %s" % e)
        except Exception as e:  # a bug must not leave a dead socket looking alive
            log.error(_TAG, "reader failed: %r" % e)
            sys.print_exception(e)
        finally:
            self._down.set()
            if self._wait_uid is not None:
                self._reply = None
                self._reply_evt.set()

    async def _on_frame(self, ws, text):
        reply, after = await self.dispatch(text)
        if reply is not None:
            await self._send(ws, reply)
        if after is not None:
            asyncio.create_task(after())  # e.g. TriggerMessage: the answer goes out first

    async def dispatch(self, text):
        """One incoming frame -> (the frame to answer with or None, an after-action or None). No socket: the
        caller sends the answer, then starts after() (a coroutine function) as a task. A CALL is served: the
        profile that handles it loaded on first use, the payload validated, the handler run, and a failure
        mapped to its CALLERROR. An answer to our outstanding CALL wakes call()."""
        try:
            frame = rpc.decode(text)
        except rpc.CallError as e:
            # No usable id: answer with "-1" so the peer at least sees why (docs/decisions.md).
            return [rpc.ERROR, e.uid or "-1", e.code, e.description, {}], None
        if frame is None:
            return None, None
        kind, uid, action, payload = frame
        if kind == rpc.CALL:
            if self.boot_status == "Rejected":
                return None, None  # OCPP 1.6 §4.2: a rejected CP answers nothing until the retry interval
            big = len(text) > _BIG_FRAME
            if big:
                await asyncio.sleep_ms(0)
            return await self._serve(uid, action, payload, big)
        if uid == self._wait_uid:
            self._reply = (rpc.RESULT, payload) if kind == rpc.RESULT else (rpc.ERROR, action, payload[0])
            self._reply_evt.set()
        else:
            log.warn(_TAG, "ignored answer to unknown id %s" % uid)
        return None, None

    async def _load(self, lazy):
        loader, ahead = lazy
        if ahead is not None:
            ahead()
            await asyncio.sleep_ms(0)
        loader()  # a MemoryError leaves the profile lazy: the next CALL tries again
        for name in [a for a in self._lazy if self._lazy[a] is lazy]:
            del self._lazy[name]
        await asyncio.sleep_ms(0)  # its import was a long step (1-2 ms on the host): the other tasks go first

    async def _serve(self, uid, action, payload, big=False):
        after = None
        lazy = self._lazy.get(action)
        if lazy is not None:
            try:
                await self._load(lazy)  # a profile that fails to load otherwise fails the reader, as a bug would
            except MemoryError:
                # A late import may find no block for its names even with much of the heap free
                # (docs/decisions.md, Memory): this CALL fails, the link and the other profiles stay, and a later
                # attempt may load it.
                log.error(_TAG, "no memory to load the handler of " + action)
                return [rpc.ERROR, uid, rpc.INTERNAL, "%s: not enough memory to load its handler" % action, {}], None
        entry = self.handlers.get(action)
        try:
            if entry is None:
                if action in _ACTIONS_16:
                    raise rpc.CallError(rpc.NOT_SUPPORTED, action + " is not supported")
                raise rpc.CallError(rpc.NOT_IMPLEMENTED, "unknown action " + action)
            rpc.validate(payload, entry[0])
            if big:
                await asyncio.sleep_ms(0)
            response = entry[1](payload)
            if hasattr(response, "send"):  # an async handler (a short wait, never a CALL of ours)
                response = await response
            if isinstance(response, tuple):
                response, after = response
            return [rpc.RESULT, uid, response], after
        except rpc.CallError as e:
            return [rpc.ERROR, uid, e.code, e.description, {}], None
        except Exception as e:
            log.error(_TAG, "%s handler failed: %r" % (action, e))
            return [rpc.ERROR, uid, rpc.INTERNAL, "%s failed" % action, {}], None

    # ---- connection supervisor -----------------------------------------------------------------------
    def url(self):
        base = self.cfg.get("CentralSystemUrl")
        if base.endswith("/"):
            base = base[:-1]
        return base + "/" + _pct(self.cfg.get("ChargeBoxId"))

    async def run(self):
        while True:
            try:
                ws = await self._connect()
            except Exception as e:  # a WSError, or a MemoryError, or a bug: every failure waits its back-off
                self._failures += 1
                log.warn(_TAG, "connect to %s failed: %s" % (self.url(), e if isinstance(e, wslib.WSError)
                                                             else repr(e)))
                await asyncio.sleep_ms(self._backoff_ms(self._failures))
                continue
            self._failures = 0
            log.info(_TAG, "connected to " + self.url())
            self._down.clear()
            self._unanswered = 0
            self.ws = ws
            reader = asyncio.create_task(self._reader(ws))
            try:
                await self._connected()
            except Exception as e:
                log.error(_TAG, "session error: %r" % e)
            finally:
                self.ws = None
                reader.cancel()
                try:
                    await ws.close()
                except Exception:
                    pass
                log.warn(_TAG, "disconnected")
            self._failures = 1
            await asyncio.sleep_ms(self._backoff_ms(self._failures))

    async def _connect(self):
        cfg = self.cfg
        url = self.url()
        password = cfg.password_bytes()
        if password and url[:4].lower() != "wss:" and not self._plain_warned:
            self._plain_warned = True
            log.warn(_TAG, "the Basic-auth password goes over unencrypted ws://: anyone on the network path can "
                     "read it; use a wss:// URL")
        return await wslib.connect(url, protocol="ocpp1.6", user=cfg.get("ChargeBoxId"), password=password,
                                   ssl=self._tls() if url[:4].lower() == "wss:" else None)

    def _tls(self):
        # The context trusting CentralSystemCa; None without one (connect then refuses wss://). The first
        # certificate only: one CA signs the Central System's certificate (a deploy refuses more).
        if self._ssl is None:
            ca = self.cfg.get("CentralSystemCa")
            if ca:
                from lib import tls

                try:
                    self._ssl = tls.context(tls.certificates(ca)[:1])
                except ValueError as e:
                    raise wslib.WSError("bad CA certificate: %s" % e)
        return self._ssl

    def _backoff_ms(self, failures):
        # Exponential back-off with jitter so a fleet does not reconnect in lock-step (digest §1.5).
        lo = self.cfg.get("ReconnectBackoffMin") * 1000
        hi = self.cfg.get("ReconnectBackoffMax") * 1000
        wait = min(lo << min(failures - 1, 10), hi)
        return wait + int.from_bytes(os.urandom(2), "big") * (wait // 2) // 65536

    async def _connected(self):
        if not self.registered or self.cfg.get("SendBootOnReconnect"):  # digest §7 Q2, default: boot only
            if not await self._register():
                return
        self.boot_status = "Accepted"
        if self.on_accepted:
            self.on_accepted()
        await self._keepalive()

    async def _register(self):
        """BootNotification until Accepted (OCPP 1.6 §4.2). False when the connection dropped."""
        while not self._down.is_set():
            try:
                conf = await self.call("BootNotification", self.boot_fields)
            except (rpc.CallError, asyncio.TimeoutError) as e:
                log.warn(_TAG, "BootNotification failed: %r" % (e,))
                await self._wait_down(self._backoff_ms(2))
                continue
            except Offline:
                return False
            status, interval = self._boot_conf(conf)
            if status == "Accepted":
                self.registered = True
                return True
            self._boot_now.clear()
            wait_s = interval or _REJECTED_RETRY_S
            try:
                await asyncio.wait_for_ms(self._boot_now.wait(), wait_s * 1000)
            except asyncio.TimeoutError:
                pass
            if status == "Rejected":
                self.boot_status = None  # answer the Central System again once the interval is over
        return False

    def _boot_conf(self, conf):
        status = conf.get("status")
        self.boot_status = status
        t = clock.parse_iso(conf.get("currentTime") or "")
        if t is not None:
            clock.set_now(t)
        interval = conf.get("interval")
        interval = interval if isinstance(interval, int) and interval > 0 else 0
        log.info(_TAG, "BootNotification %s, interval %d" % (status, interval))
        if status == "Accepted" and interval:
            self.cfg.set("HeartbeatInterval", str(interval))
        return status, interval

    async def send_boot(self):
        """TriggerMessage(BootNotification): cuts a Pending/Rejected wait short, or re-registers."""
        if not self.registered:
            self._boot_now.set()
            return
        conf = await self.notify("BootNotification", self.boot_fields)
        if conf is not None:
            self._boot_conf(conf)
        self.boot_status = "Accepted"  # a registered charger stays registered whatever this answer said

    async def _wait_down(self, ms):
        try:
            await asyncio.wait_for_ms(self._down.wait(), ms)
        except asyncio.TimeoutError:
            pass

    async def _keepalive(self):
        ws = self.ws
        while not self._down.is_set():
            await self._wait_down(1000)
            if self._down.is_set():
                return
            now = time.ticks_ms()
            cfg = self.cfg
            quiet = time.ticks_diff(now, ws.last_rx_ms)
            ping_s = cfg.get("WebSocketPingInterval")
            if ping_s > 0:
                if quiet > 2 * ping_s * 1000 + 5000:
                    log.warn(_TAG, "no traffic for %d ms, reconnecting" % quiet)
                    return
                if quiet > ping_s * 1000:
                    async with self._send_lock:
                        await ws.ping()
            # The OCPP-level deadline, WebSocket ping or not: a probe goes out after _PROBE_MS of silence and
            # every CALL's answer is awaited for ResponseTimeout (call()); this backstop catches the rest.
            if quiet > _PROBE_MS + 2 * cfg.get("ResponseTimeout") * 1000:
                self.link_dead("nothing received for %d ms" % quiet)
                return
            idle = time.ticks_diff(now, self.last_send_ms)
            if idle >= cfg.get("HeartbeatInterval") * 1000 or (idle >= _PROBE_MS and quiet >= _PROBE_MS):
                self.last_send_ms = now  # one Heartbeat per interval even while the CALL slot is busy
                asyncio.create_task(self.heartbeat())

    async def heartbeat(self):
        conf = await self.notify("Heartbeat", {})
        if conf is None:
            return False
        t = clock.parse_iso(conf.get("currentTime") or "")
        if t is not None:
            clock.set_now(t)
        return True


def _answer_spec(action):
    # What the answer to our CALL of action must hold (OCPP 1.6 JSON schemas, *.conf): the required fields and
    # the type of every field we know; unknown fields are ignored (docs/decisions.md). None: an empty object
    # (anything but an object is malformed). Built on demand: as code it stays in flash (ROMFS), as a table it
    # would hold ~1 KB of tuples in the heap for good.
    if action in ("Authorize", "StartTransaction", "StopTransaction"):
        info = (("status", ENUM, True, ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")),
                ("expiryDate", TIME, False, None), ("parentIdTag", STR, False, 20))
        if action == "StartTransaction":
            return ("idTagInfo", OBJ, True, info), ("transactionId", INT, True, None)
        return (("idTagInfo", OBJ, action == "Authorize", info),)
    if action == "BootNotification":
        return (("status", ENUM, True, ("Accepted", "Pending", "Rejected")), ("currentTime", TIME, True, None),
                ("interval", INT, True, None))
    if action == "Heartbeat":
        return (("currentTime", TIME, True, None),)
    if action == "DataTransfer":
        return (("status", ENUM, True, ("Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId")),
                ("data", STR, False, None))
    return None


def _checked(action, payload):
    # A malformed answer is a failed attempt, like a CALLERROR (docs/decisions.md).
    try:
        if not isinstance(payload, dict):
            raise rpc.CallError(rpc.FORMATION, "payload is not an object")
        spec = _answer_spec(action)
        if spec:
            rpc.validate(payload, spec, True)
    except rpc.CallError as e:
        log.warn(_TAG, "malformed answer to %s: %s" % (action, e.description))
        raise rpc.BadAnswer(e.code, "%s answer: %s" % (action, e.description))
    return payload


def _pct(text):
    # RFC 3986 percent-encoding of the charge box id in the URL path (OCPP-J §3.1.1).
    out = []
    for ch in text.encode():
        if (48 <= ch <= 57) or (65 <= ch <= 90) or (97 <= ch <= 122) or ch in b"-._~":
            out.append(chr(ch))
        else:
            out.append("%%%02X" % ch)
    return "".join(out)
