"""Demo OCPP 1.6-J Central System for the simulation and the integration tests.

Built on the `ocpp` package (v16) and `websockets`. It answers the Core messages, logs every frame in and out
(stdout, an optional JSON-lines file and memory) and has a JSON-lines control socket on 127.0.0.1 so tests can
read the traffic, send CALLs and raw frames, and change its answers at run time.

    .venv/bin/python tools/csms.py --port 9000 --control 9001 --tags TAG1,DEMO

Control requests (one JSON object per line, one reply line each):
    {"cmd":"messages","since":N}            -> {"ok":true,"messages":[...],"next":M}
    {"cmd":"events","since":N}              -> connection events (connect, close, auth refusals), same shape
    {"cmd":"connected"}                     -> {"ok":true,"cps":[...]}
    {"cmd":"call","cp":ID,"action":A,"payload":{...},"timeout":30[,"validate":false]}
                                            -> {"ok":true,"result":{...}}
                                             | {"ok":false,"error":"CALLERROR <code> <desc>","reply":[4,...]}
                                             | {"ok":false,"error":"..."} (timeout, disconnect, invalid result)
    {"cmd":"raw","cp":ID,"text":"...","timeout":10} -> {"ok":true,"reply":frame|null} (null: no answer)
    {"cmd":"set","boot_status":..,"interval":..,"tags":[..],"auth":{ID:PW|null},"start_status":..|null,
     "tag_status":{TAG:"Blocked"|"Expired"|..},"parents":{TAG:PARENT},"fail":{ACTION:N},
     "answer":{ACTION:VALUE|null},"silent":{ACTION:N}}
        fail: the next N CALLs of ACTION get a CALLERROR (InternalError).
        answer: every CALL of ACTION is answered [3, id, VALUE] with VALUE exactly as given (any JSON: a list,
                a payload with a wrong type...), without schema checks, until set to null again.
        silent: the next N CALLs of ACTION get no answer at all (-1: all of them, 0: answer again).
    {"cmd":"disconnect","cp":ID}
CALLERRORs we send use the OCPP 1.6 spellings (FormationViolation, OccurenceConstraintViolation).
--auth "*:PASSWORD" (or "auth":{"*":PW}) is the password of every id not named.
Passwords (--auth, "set") are text, "hex:<hex>" for raw bytes, and 32-40 hex digits are taken as the raw bytes
they encode (the OCPP AuthorizationKey rule, so CP and CSMS can be given the same string).
"""

import argparse
import asyncio
import base64
import binascii
import datetime
import http
import itertools
import json
import logging
import signal
import ssl
import sys
import time
import urllib.parse

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "ocpp1.6"
# The ocpp package answers with the OCPP 2.0 spellings; 1.6 peers expect these (digest 1.3).
ERROR_SPELLING_16 = {"FormatViolation": "FormationViolation",
                     "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def clock(t):
    return time.strftime("%H:%M:%S", time.localtime(t)) + ".%03d" % int((t % 1) * 1000)


def password_bytes(spec):
    """The bytes a configured password stands for (see the module doc)."""
    if isinstance(spec, bytes):
        return spec
    if spec.startswith("hex:"):
        return bytes.fromhex(spec[4:])
    if 32 <= len(spec) <= 40 and len(spec) % 2 == 0:
        try:
            return bytes.fromhex(spec)
        except ValueError:
            pass
    return spec.encode()


def parse_frame(text):
    """The JSON value of a frame, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        return None


class Journal:
    """Every frame and connection event: printed (echo), kept in memory (keep) and appended to the --log file.
    Each observer is called with every frame's entry and the LoggedSocket it passed (the harness's
    in-process Central System, tools/harness/csms.py, books transactions from them)."""

    def __init__(self, path=None, echo=True, keep=True):
        self.messages = []
        self.events = []
        self.echo = echo
        self.keep = keep
        self.observers = []
        self._file = open(path, "a", buffering=1) if path else None

    def frame(self, cp_id, direction, raw, sock=None):
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        entry = {"t": time.time(), "cp": cp_id, "dir": direction, "raw": raw, "msg": None}
        msg = parse_frame(raw)
        if isinstance(msg, list):
            entry["msg"] = msg
        if self.keep:
            self.messages.append(entry)
        if self._file:
            self._file.write(json.dumps(entry) + "\n")
        for observe in self.observers:
            observe(entry, sock)
        if self.echo:
            arrow = "->" if direction == "in" else "<-"
            note = "" if entry["msg"] is not None else "   (not an OCPP frame)"
            say("%s %s %s %s%s" % (clock(entry["t"]), cp_id, arrow, raw, note))

    def event(self, cp_id, kind, text):
        entry = {"t": time.time(), "cp": cp_id, "event": kind, "text": text}
        self.events.append(entry)
        if self.echo:
            say("%s %s" % (clock(entry["t"]), text))

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


def say(line):
    print(line, flush=True)


class LoggedSocket:
    """The websocket as the ChargePoint sees it: logs both ways and feeds waiters for raw replies."""

    def __init__(self, ws, cp_id, journal):
        self.ws = ws
        self.cp_id = cp_id
        self.journal = journal
        self._waiters = []   # (predicate on parsed frame, future)

    async def recv(self):
        raw = await self.ws.recv()
        self.journal.frame(self.cp_id, "in", raw, self)
        self._wake(raw)
        return raw

    async def send(self, text):
        self.journal.frame(self.cp_id, "out", text, self)
        await self.ws.send(text)

    def expect(self, match_id=None):
        """A future for the next incoming frame (with this uniqueId if given)."""
        fut = asyncio.get_running_loop().create_future()
        if match_id is None:
            pred = lambda msg: True  # noqa: E731
        else:
            pred = lambda msg: isinstance(msg, list) and len(msg) > 1 and msg[1] == match_id  # noqa: E731
        self._waiters.append((pred, fut))
        return fut

    def forget(self, fut):
        self._waiters = [w for w in self._waiters if w[1] is not fut]

    def _wake(self, raw):
        msg = parse_frame(raw)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(msg):
                fut.set_result(msg if msg is not None else raw)
                self.forget(fut)


class Settings:
    """What the Central System answers; changed at run time by the control "set" command."""

    def __init__(self, args):
        self.boot_status = args.boot_status
        self.interval = args.interval
        self.tags = set(t for t in args.tags.split(",") if t)
        self.auth = dict(parse_auth(a) for a in args.auth)
        self.start_status = None   # None: Accepted for known tags, Invalid otherwise
        self.tag_statuses = {}     # idTag -> status other than Accepted/Invalid (Blocked, Expired, ...)
        self.parents = {}          # idTag -> parentIdTag (the group a card belongs to)
        self.fail = {}             # action -> how many of its next CALLs to answer with a CALLERROR
        self.answers = {}          # action -> the raw CALLRESULT payload every CALL of it gets
        self.silent = {}           # action -> how many of its next CALLs get no answer (-1: all)
        self.tx_ids = itertools.count(1)
        self.start_ids = {}     # (charger, connector, idTag, meterStart, timestamp) -> transactionId

    def tag_status(self, id_tag):
        if id_tag in self.tag_statuses:
            return self.tag_statuses[id_tag]
        return "Accepted" if id_tag in self.tags else "Invalid"

    def id_tag_info(self, id_tag, status=None):
        info = {"status": status or self.tag_status(id_tag)}
        if id_tag in self.parents:
            info["parent_id_tag"] = self.parents[id_tag]
        return info

    def update(self, req):
        if "boot_status" in req:
            self.boot_status = req["boot_status"]
        if "interval" in req:
            self.interval = int(req["interval"])
        if "tags" in req:
            self.tags = set(req["tags"])
        if "start_status" in req:
            self.start_status = req["start_status"]
        self.tag_statuses.update(req.get("tag_status") or {})
        self.parents.update(req.get("parents") or {})
        self.fail.update(req.get("fail") or {})
        self.silent.update(req.get("silent") or {})
        for action, value in (req.get("answer") or {}).items():
            if value is None:
                self.answers.pop(action, None)
            else:
                self.answers[action] = value
        for cp_id, pw in (req.get("auth") or {}).items():
            if pw is None:
                self.auth.pop(cp_id, None)
            else:
                self.auth[cp_id] = password_bytes(pw)

    def override(self, action):
        """What to do instead of the normal answer to a CALL of action: ("silent",), ("answer", payload) or
        None (answer normally). Spends one planned silence."""
        left = self.silent.get(action, 0)
        if left:
            if left > 0:
                self.silent[action] = left - 1
            return ("silent",)
        if action in self.answers:
            return ("answer", self.answers[action])
        return None

    def failing(self, action):
        """Spends one planned failure of action (tests of TransactionMessageAttempts)."""
        if self.fail.get(action, 0) > 0:
            self.fail[action] -= 1
            raise InternalError(description="planned failure (control: set fail)")


def parse_auth(text):
    cp_id, sep, pw = text.partition(":")
    if not sep or not cp_id:
        raise argparse.ArgumentTypeError("--auth wants ID:PASSWORD, got %r" % text)
    return cp_id, password_bytes(pw)


class DemoChargePoint(ChargePoint):
    """One connected charge point: the Core answers, plus CALLs and raw frames for the control socket."""

    def __init__(self, cp_id, sock, settings):
        super().__init__(cp_id, sock, response_timeout=3600)
        self.sock = sock
        self.settings = settings
        self._ids = itertools.count(1)

    async def route_message(self, raw_msg):
        msg = parse_frame(raw_msg)
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and isinstance(msg[2], str):
            how = self.settings.override(msg[2])
            if how is not None:
                if how[0] == "answer":  # raw, past the ocpp package and its schema checks
                    await self._send(json.dumps([3, msg[1], how[1]], separators=(",", ":")))
                return
        # A CP under test sends garbage on purpose; the ocpp package must never end the connection over it.
        try:
            await super().route_message(raw_msg)
        except ConnectionClosed:
            raise
        except Exception as e:  # noqa: BLE001
            say("%s %s: could not handle frame: %r" % (clock(time.time()), self.id, e))

    async def _send(self, message):
        msg = parse_frame(message)
        if isinstance(msg, list) and len(msg) > 2 and msg[0] == 4 and msg[2] in ERROR_SPELLING_16:
            msg[2] = ERROR_SPELLING_16[msg[2]]
            message = json.dumps(msg, separators=(",", ":"))
        await self.sock.send(message)

    async def call_dict(self, action, payload, timeout, validate=True):
        """Send one CALL built from a camelCase payload through the ocpp package; return the reply frame
        ([3,...] or [4,...]) exactly as it came off the wire."""
        cls = getattr(call, action, None)
        if cls is None or not isinstance(cls, type):
            raise ValueError("unknown OCPP 1.6 action %r" % action)
        request = cls(**camel_to_snake_case(payload or {}))
        unique_id = "cs-%d" % next(self._ids)
        reply = self.sock.expect(unique_id)
        try:
            await self.unless_closed(self.call(request, suppress=False, unique_id=unique_id,
                                               skip_schema_validation=not validate), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("no reply to %s within %s s" % (action, timeout))
        except ConnectionError:
            raise
        except Exception as e:  # noqa: BLE001
            if not reply.done():
                raise ValueError("%s failed before a reply: %s" % (action, e))
            if reply.result()[0] == 3:
                raise ValueError("invalid %s result %s: %s" % (action, json.dumps(reply.result()), e))
        finally:
            self.sock.forget(reply)
        return reply.result()

    async def raw(self, text, timeout):
        """Send text as one frame unchanged; the CP's answer (matched by uniqueId when text has one) or None."""
        msg = parse_frame(text)
        match_id = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else None
        reply = self.sock.expect(match_id)
        try:
            await self.sock.send(text)
            return await self.unless_closed(reply, timeout)
        except (asyncio.TimeoutError, ConnectionError):
            return None
        finally:
            self.sock.forget(reply)

    async def unless_closed(self, awaitable, timeout):
        """Await with a timeout, but give up at once when the charge point goes away."""
        work = asyncio.ensure_future(awaitable)
        closed = asyncio.ensure_future(self.sock.ws.wait_closed())
        try:
            await asyncio.wait({work, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if closed.done() and not work.done():
                # An answer sent just before the close (ChangeConfiguration AuthorizationKey answers, then
                # reconnects) is still being routed: give it a moment
                await asyncio.wait({work}, timeout=1)
        finally:
            closed.cancel()
        if work.done():
            return work.result()
        work.cancel()
        if closed.done() and not closed.cancelled():
            raise ConnectionError("%s disconnected before answering" % self.id)
        raise asyncio.TimeoutError()

    @on(Action.boot_notification)
    def on_boot(self, **_):
        s = self.settings
        return call_result.BootNotification(current_time=now_iso(), interval=s.interval,
                                            status=s.boot_status)

    @on(Action.heartbeat)
    def on_heartbeat(self, **_):
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.authorize)
    def on_authorize(self, id_tag, **_):
        return call_result.Authorize(id_tag_info=self.settings.id_tag_info(id_tag))

    @on(Action.start_transaction)
    def on_start(self, id_tag, connector_id, meter_start, timestamp, **_):
        self.settings.failing("StartTransaction")
        # An identical StartTransaction is the charger's resend after it lost our answer (a power cut, a
        # dropped link): it is the same transaction and gets the same id, as production Central Systems do.
        key = (self.id, connector_id, id_tag, meter_start, timestamp)
        tid = self.settings.start_ids.get(key)
        if tid is None:
            tid = self.settings.start_ids[key] = next(self.settings.tx_ids)
        else:
            self.sock.journal.event(self.id, "resend", "%s StartTransaction resent: transaction %d" % (self.id, tid))
        return call_result.StartTransaction(transaction_id=tid,
                                            id_tag_info=self.settings.id_tag_info(id_tag,
                                                                                  self.settings.start_status))

    @on(Action.stop_transaction)
    def on_stop(self, id_tag=None, **_):
        self.settings.failing("StopTransaction")
        if id_tag is None:
            return call_result.StopTransaction()
        return call_result.StopTransaction(id_tag_info=self.settings.id_tag_info(id_tag))

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, **_):
        if vendor_id in ("org.openchargealliance", "org.micropython.evse"):
            return call_result.DataTransfer(status="Accepted")
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.meter_values)
    def on_meter_values(self, **_):
        self.settings.failing("MeterValues")
        return call_result.MeterValues()

    @on(Action.status_notification)
    def on_status(self, **_):
        return call_result.StatusNotification()

    @on(Action.firmware_status_notification)
    def on_fw_status(self, **_):
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diag_status(self, **_):
        return call_result.DiagnosticsStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event(self, **_):
        return call_result.SecurityEventNotification()

    @on(Action.signed_firmware_status_notification)
    def on_signed_fw_status(self, **_):
        return call_result.SignedFirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status(self, **_):
        return call_result.LogStatusNotification()


class CentralSystem:
    """The WebSocket endpoint, the connected charge points and the control socket."""

    def __init__(self, args, journal=None):
        self.args = args
        self.settings = Settings(args)
        self.journal = journal or Journal(args.log)
        self.cps = {}   # id -> DemoChargePoint of the live connection
        self.base = args.path.rstrip("/") + "/"
        self.ws_server = None
        self.ctl_server = None

    # --- WebSocket side -------------------------------------------------------------------------------

    def cp_id_of(self, path):
        path = path.split("?", 1)[0]
        if not path.startswith(self.base) or len(path) == len(self.base):
            return None
        return urllib.parse.unquote(path[len(self.base):])

    def check_request(self, conn, request):
        """HTTP-level checks before the upgrade: path and Basic auth. Returns a refusal or None."""
        cp_id = self.cp_id_of(request.path)
        if cp_id is None:
            self.journal.event("-", "refused", "refused %s: path is not %s<chargeBoxId>"
                               % (request.path, self.base))
            return conn.respond(http.HTTPStatus.NOT_FOUND, "path must be %s<chargeBoxId>\n" % self.base)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL not in offered:
            self.journal.event(cp_id, "refused", cp_id + " refused: no %s subprotocol offered (got %r)"
                               % (SUBPROTOCOL, request.headers.get("Sec-WebSocket-Protocol")))
            return conn.respond(http.HTTPStatus.BAD_REQUEST, "subprotocol %s required\n" % SUBPROTOCOL)
        if not self.settings.auth:
            return None
        why = self.auth_problem(cp_id, request.headers.get("Authorization"))
        if why is None:
            self.journal.event(cp_id, "auth", "%s Basic auth OK: id known, password matched" % cp_id)
            return None
        self.journal.event(cp_id, "refused", "%s refused with 401: %s" % (cp_id, why))
        resp = conn.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        resp.headers["WWW-Authenticate"] = 'Basic realm="OCPP", charset="UTF-8"'
        return resp

    def auth_problem(self, cp_id, header):
        """None when the Basic credentials fit cp_id, else a sentence saying why not."""
        if not header:
            return "no Authorization header from %s" % cp_id
        scheme, _, blob = header.partition(" ")
        if scheme.lower() != "basic":
            return "Authorization scheme %r from %s is not Basic" % (scheme, cp_id)
        try:
            user, sep, got = base64.b64decode(blob.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return "Authorization from %s is not valid base64" % cp_id
        user = user.decode("utf-8", "replace")
        if not sep:
            return "Basic credentials from %s have no ':' between id and password" % cp_id
        if user != cp_id:
            return "Basic user %r does not match the charge point id %r in the URL" % (user, cp_id)
        want = self.settings.auth.get(cp_id, self.settings.auth.get("*"))  # "*": every charge point's
        if want is None:
            return "id %r has no password configured here (unknown charge point)" % cp_id
        if got == want:
            return None
        return "id %r known, password did NOT match (%s)" % (cp_id, self.mismatch_hint(got, want))

    @staticmethod
    def mismatch_hint(got, want):
        if got == want.hex().encode() or got == want.hex().upper().encode():
            return "it sent the hex text of the key instead of the %d raw bytes" % len(want)
        if got.lower() == want.lower():
            return "differs only in letter case"
        return "received %d bytes, expected %d" % (len(got), len(want))

    async def handle(self, ws):
        cp_id = self.cp_id_of(ws.request.path)
        sock = LoggedSocket(ws, cp_id, self.journal)
        cp = DemoChargePoint(cp_id, sock, self.settings)
        old = self.cps.get(cp_id)
        self.cps[cp_id] = cp
        peer = "%s:%s" % ws.remote_address[:2]
        self.journal.event(cp_id, "connect", "%s connected from %s (%s%s)" % (
            cp_id, peer, ws.subprotocol, ", TLS" if self.args.certfile else ""))
        if old is not None:
            await old.sock.ws.close(1000, "replaced by a new connection")
        try:
            await cp.start()
        except ConnectionClosed as e:
            how = "close code %d %s" % (e.rcvd.code, e.rcvd.reason) if e.rcvd else "dropped, no close frame"
            self.journal.event(cp_id, "close", "%s disconnected (%s)" % (cp_id, how.strip()))
        finally:
            if self.cps.get(cp_id) is cp:
                del self.cps[cp_id]

    def ssl_context(self):
        if not self.args.certfile:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.args.certfile, self.args.keyfile)
        return ctx

    # --- control socket -------------------------------------------------------------------------------

    async def control_client(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                reply = await self.control(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def control(self, line):
        try:
            req = json.loads(line)
            handler = getattr(self, "cmd_" + str(req.get("cmd")), None)
            if handler is None:
                return {"ok": False, "error": "unknown command %r" % req.get("cmd")}
            return await handler(req)
        except Exception as e:  # noqa: BLE001 - a bad request must not stop the server
            return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}

    def cp(self, req):
        cp = self.cps.get(req.get("cp"))
        if cp is None:
            raise LookupError("charge point %r is not connected (connected: %s)"
                              % (req.get("cp"), sorted(self.cps)))
        return cp

    async def cmd_messages(self, req):
        since = int(req.get("since", 0))
        msgs = self.journal.messages
        return {"ok": True, "messages": msgs[since:], "next": len(msgs)}

    async def cmd_events(self, req):
        since = int(req.get("since", 0))
        events = self.journal.events
        return {"ok": True, "events": events[since:], "next": len(events)}

    async def cmd_connected(self, req):
        return {"ok": True, "cps": sorted(self.cps)}

    async def cmd_call(self, req):
        cp = self.cp(req)
        reply = await cp.call_dict(req["action"], req.get("payload") or {},
                                   float(req.get("timeout", 30)), req.get("validate", True))
        if reply[0] == 4:
            code, desc = (reply + ["", ""])[2:4]
            return {"ok": False, "error": "CALLERROR %s %s" % (code, desc), "reply": reply}
        return {"ok": True, "result": reply[2]}

    async def cmd_raw(self, req):
        reply = await self.cp(req).raw(req["text"], float(req.get("timeout", 10)))
        return {"ok": True, "reply": reply}

    async def cmd_set(self, req):
        self.settings.update(req)
        s = self.settings
        return {"ok": True, "boot_status": s.boot_status, "interval": s.interval,
                "tags": sorted(s.tags), "start_status": s.start_status, "auth": sorted(s.auth),
                "answer": s.answers, "silent": s.silent}

    async def cmd_disconnect(self, req):
        cp = self.cp(req)
        await cp.sock.ws.close(int(req.get("code", 1000)), req.get("reason", "closed by the operator"))
        return {"ok": True}

    # --- life cycle -------------------------------------------------------------------------------------

    async def start(self):
        """Listens (and serves the control socket when asked); the ready line's text."""
        a = self.args
        ping = a.ping_interval or None
        self.ws_server = await serve(self.handle, a.host, a.port, subprotocols=[SUBPROTOCOL],
                                     process_request=self.check_request, compression=None,
                                     ssl=self.ssl_context(), ping_interval=ping, ping_timeout=ping,
                                     server_header="open-evse-demo-csms", close_timeout=2)
        port = self.ws_server.sockets[0].getsockname()[1]
        ctl = ""
        if a.control is not None:
            self.ctl_server = await asyncio.start_server(self.control_client, "127.0.0.1", a.control)
            ctl = " control=127.0.0.1:%d" % self.ctl_server.sockets[0].getsockname()[1]
        scheme = "wss" if a.certfile else "ws"
        return "CSMS READY url=%s://%s:%d%s%s" % (scheme, a.host, port, a.path.rstrip("/"), ctl)

    async def close(self):
        """Stops listening; every connection drops."""
        if self.ctl_server:
            self.ctl_server.close()
            self.ctl_server = None
        if self.ws_server:
            self.ws_server.close()
            await self.ws_server.wait_closed()
            self.ws_server = None

    async def run(self):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        say(await self.start())
        try:
            await stop.wait()
        finally:
            say("%s CSMS stopping" % clock(time.time()))
            await self.close()
            self.journal.close()


def build_parser():
    p = argparse.ArgumentParser(description="Demo OCPP 1.6-J Central System (see the module doc).")
    p.add_argument("--port", type=int, required=True, help="WebSocket port (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--path", default="/ocpp", help="endpoint; charge points connect to PATH/<id>")
    p.add_argument("--certfile", help="PEM server certificate: serve wss://")
    p.add_argument("--keyfile", help="PEM private key of --certfile")
    p.add_argument("--auth", nargs="*", default=[], metavar="ID:PASSWORD",
                   help="require HTTP Basic auth with these credentials (hex:... for raw bytes)")
    p.add_argument("--tags", default="", help="comma-separated idTags that are Accepted")
    p.add_argument("--control", type=int, help="control socket port on 127.0.0.1 (0 = free port)")
    p.add_argument("--log", help="append every frame to this JSON-lines file")
    p.add_argument("--boot-status", default="Accepted", choices=["Accepted", "Pending", "Rejected"])
    p.add_argument("--interval", type=int, default=300, help="BootNotification interval (s)")
    p.add_argument("--ping-interval", type=float, default=20,
                   help="WebSocket ping period in s; the CP must answer within the same time (0 = off)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        build_parser().error("--certfile and --keyfile go together")
    try:
        for a in args.auth:
            parse_auth(a)
    except (argparse.ArgumentTypeError, ValueError) as e:
        build_parser().error(str(e))
    # The ocpp package logs every CALLERROR it sends with a traceback; our journal already shows the frames.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(CentralSystem(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
