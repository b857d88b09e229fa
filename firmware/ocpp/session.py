# The OCPP-J session: keeps one WebSocket to the Central System alive, registers with BootNotification,
# sends Heartbeats, and carries CALLs both ways with at most one outstanding CALL per direction (OCPP-J §4.1.1).
# Reconnect policy lives here, the protocol in lib/ws.py (as umqtt.robust sits on umqtt.simple).
import asyncio
import os
import sys
import time

from firmware import clock, log
from firmware.jsonbuf import JsonBuf
from firmware.ocpp import rpc
from lib import ws as wslib

_TAG = "ocpp"
_REJECTED_RETRY_S = 60  # BootNotification interval 0 means "CP chooses" (digest §2.2)
_OUT_BUF = 6144  # the largest outgoing frame encoded without a heap allocation (GetConfiguration ~5 KB)


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
        ca = cfg.get("CentralSystemCa")
        self._cadata = wslib.pem_to_der(ca) if ca else None
        if self._cadata and cfg.get("CentralSystemUrl").startswith("wss"):
            try:
                wslib.tls_context(self._cadata)  # built now, while the heap is whole, and reused
            except wslib.WSError as e:
                log.error(_TAG, str(e))
        self._reply = None
        self._reply_evt = asyncio.Event()
        self._wait_uid = None
        self._prefix = "%04x" % (int.from_bytes(os.urandom(2), "big"))  # ids never repeat across reboots
        self._counter = 0
        self._boot_now = asyncio.Event()  # a TriggerMessage(BootNotification) cuts the Pending wait short

    @property
    def online(self):
        return self.ws is not None

    def handle(self, action, spec, fn):
        self.handlers[action] = (spec, fn)

    def lazy(self, actions, loader):
        for action in actions:
            self._lazy[action] = loader

    def trigger_boot(self):
        self._boot_now.set()

    # ---- outgoing CALLs ------------------------------------------------------------------------------
    async def call(self, action, payload, timeout_ms=None):
        """Sends one CALL and returns the CALLRESULT payload. Raises Offline, rpc.CallError or
        asyncio.TimeoutError. Callers queue behind each other: one outstanding CALL per direction."""
        if timeout_ms is None:
            timeout_ms = self.cfg.get("ResponseTimeout") * 1000
        async with self._call_lock:
            ws = self.ws
            if ws is None:
                raise Offline()
            self._counter += 1
            uid = "%s-%d" % (self._prefix, self._counter)
            self._reply = None
            self._reply_evt.clear()
            self._wait_uid = uid
            try:
                await self._send(ws, [rpc.CALL, uid, action, payload])
                self.last_send_ms = time.ticks_ms()
                await asyncio.wait_for_ms(self._reply_evt.wait(), timeout_ms)
            finally:
                self._wait_uid = None
            reply = self._reply
        if reply is None:
            raise Offline()
        if reply[0] == rpc.ERROR:
            raise rpc.CallError(reply[1], reply[2])
        return reply[1]

    async def _send(self, ws, frame):
        async with self._send_lock:
            data = self._out.dump(frame)
            if log.level <= log.DEBUG:  # formatting a copy of every frame is not free
                log.debug(_TAG, "-> %s" % bytes(data))
            await ws.send(data, True)

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
        try:
            frame = rpc.decode(text)
        except rpc.CallError as e:
            # No usable id: answer with "-1" so the peer at least sees why (docs/decisions.md).
            await self._send(ws, [rpc.ERROR, e.uid or "-1", e.code, e.description, {}])
            return
        if frame is None:
            return
        kind, uid, action, payload = frame
        if kind == rpc.CALL:
            await self._serve(ws, uid, action, payload)
        elif uid == self._wait_uid:
            self._reply = (rpc.RESULT, payload) if kind == rpc.RESULT else (rpc.ERROR, action, payload[0])
            self._reply_evt.set()
        else:
            log.warn(_TAG, "ignored answer to unknown id %s" % uid)

    async def _serve(self, ws, uid, action, payload):
        if self.boot_status == "Rejected":
            return  # OCPP 1.6 §4.2: a rejected CP answers nothing until the retry interval
        after = None
        entry = self.handlers.get(action)
        if entry is None and action in self._lazy:
            loader = self._lazy[action]
            for name in [a for a in self._lazy if self._lazy[a] is loader]:
                del self._lazy[name]
            loader()
            entry = self.handlers.get(action)
        try:
            if entry is None:
                if action in _ACTIONS_16:
                    raise rpc.CallError(rpc.NOT_SUPPORTED, action + " is not supported")
                raise rpc.CallError(rpc.NOT_IMPLEMENTED, "unknown action " + action)
            rpc.validate(payload, entry[0])
            response = entry[1](payload)
            if hasattr(response, "send"):  # an async handler (a short wait, never a CALL of ours)
                response = await response
            if isinstance(response, tuple):
                response, after = response
            reply = [rpc.RESULT, uid, response]
        except rpc.CallError as e:
            reply = [rpc.ERROR, uid, e.code, e.description, {}]
        except Exception as e:
            log.error(_TAG, "%s handler failed: %r" % (action, e))
            reply = [rpc.ERROR, uid, rpc.INTERNAL, "%s failed" % action, {}]
        await self._send(ws, reply)
        if after is not None:
            asyncio.create_task(after())  # e.g. TriggerMessage: the answer goes out first

    # ---- connection supervisor -----------------------------------------------------------------------
    def url(self):
        base = self.cfg.get("CentralSystemUrl")
        if base.endswith("/"):
            base = base[:-1]
        return base + "/" + _pct(self.cfg.get("ChargeBoxId"))

    async def run(self):
        failures = 0
        while True:
            try:
                ws = await self._connect()
            except wslib.WSError as e:
                log.warn(_TAG, "connect to %s failed: %s" % (self.url(), e))
                failures += 1
                await asyncio.sleep_ms(self._backoff_ms(failures))
                continue
            failures = 0
            log.info(_TAG, "connected to " + self.url())
            self._down.clear()
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
            failures = 1
            await asyncio.sleep_ms(self._backoff_ms(failures))

    async def _connect(self):
        cfg = self.cfg
        return await wslib.connect(self.url(), protocol="ocpp1.6", user=cfg.get("ChargeBoxId"),
                                   password=cfg.password_bytes(), cadata=self._cadata)

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
        try:
            self._boot_conf(await self.call("BootNotification", self.boot_fields))
        except Exception as e:
            log.warn(_TAG, "BootNotification failed: %r" % (e,))
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
            ping_s = self.cfg.get("WebSocketPingInterval")
            if ping_s > 0:
                quiet = time.ticks_diff(now, ws.last_rx_ms)
                if quiet > 2 * ping_s * 1000 + 5000:
                    log.warn(_TAG, "no traffic for %d ms, reconnecting" % quiet)
                    return
                if quiet > ping_s * 1000:
                    async with self._send_lock:
                        await ws.ping()
            if time.ticks_diff(now, self.last_send_ms) >= self.cfg.get("HeartbeatInterval") * 1000:
                self.last_send_ms = now  # one Heartbeat per interval even while the CALL slot is busy
                asyncio.create_task(self.heartbeat())

    async def heartbeat(self):
        try:
            conf = await self.call("Heartbeat", {})
        except Exception as e:
            log.warn(_TAG, "Heartbeat failed: %r" % (e,))
            return False
        t = clock.parse_iso(conf.get("currentTime") or "")
        if t is not None:
            clock.set_now(t)
        return True


def _pct(text):
    # RFC 3986 percent-encoding of the charge box id in the URL path (OCPP-J §3.1.1).
    out = []
    for ch in text.encode():
        if (48 <= ch <= 57) or (65 <= ch <= 90) or (97 <= ch <= 122) or ch in b"-._~":
            out.append(chr(ch))
        else:
            out.append("%%%02X" % ch)
    return "".join(out)
