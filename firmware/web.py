# The web page served by the board (issue 13; docs/decisions.md, "Web page"): status that updates live, start,
# stop and the current limit, the configuration, the recent log, the firmware. Imported only when WebEnabled:
# a board without the page pays no heap for it or for microdot.
#
# It sees the charger only through the model (firmware/chargepoint.py: snapshot(), version, changed(), commands),
# and that only through Model below, the one adapter to change when the model's names change. The page itself is
# static (www/: HTML, CSS, plain JS, gzip-compressed at build time and served from flash as they are); everything
# live is JSON under /api/, and /api/events is a Server-Sent Events stream of the snapshot.
#
# Security: every /api/ call but the session's state, login and the first password needs a session cookie
# (firmware/webauth.py); every POST must be JSON (a cross-site form cannot send that without a CORS preflight,
# which this server never grants), may not come from another origin, and within a session must carry the
# session's CSRF token in X-CSRF-Token. Secrets (the keys marked SECRET) are never sent: the configuration says
# only whether one is set, and a blank secret field leaves it as it is.
import asyncio
import json
import time
from micropython import const
from microdot import Microdot, Request, Response
from firmware import config, log, setupcheck, webauth
from firmware import config_keys as K

_TAG = "web"
_BEAT_MS = const(15000)      # an SSE comment when nothing changed: a dead client is found by the failing write
_MAX_STREAMS = const(3)      # live status streams at once; the oldest gives way
_MAX_CONN = const(6)         # connections being served at once (lwIP has ~10 sockets for everything)
_HEAD_MS = const(5000)       # a request's head and body must arrive within this
_LOG_LINES = const(20)       # the recent log the page shows: 20 lines of at most _LOG_WIDTH characters
_LOG_WIDTH = const(100)
_ID_TAG_MAX = const(20)      # OCPP IdToken: CiString20
_COOKIE = "sid"

# The settings the configuration page shows, in its order; keys the table does not know (yet) are left out.
CONFIG_KEYS = ("CentralSystemUrl", "ChargeBoxId", "Password", "MeterModel", "MeterUnit", "Variant", "MaxCurrent",
               "FreeVendEnabled", "MqttUrl", "MqttUser", "MqttPassword", "MqttTopic", "MqttDiscovery",
               "MqttInterval")
_REQUIRED = ("CentralSystemUrl", "ChargeBoxId")
# Static files: URL path -> file under the static directory (stored as NAME.gz).
_STATIC = {"/": "index.html", "/app.js": "app.js", "/app.css": "app.css"}
_OPEN = ("/api/session", "/api/login", "/api/password")  # reachable without a session
_SECURITY = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
             "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# Request limits: the largest body is the configuration form (a 512-character URL and a few fields).
Request.max_content_length = 4096
Request.max_body_length = 4096
Request.max_readline = 2048


class Model:
    """The charger model (firmware/chargepoint.py) as the page uses it: the one place that knows its names.
    Commands return (ok, reason) and never raise for bad input."""

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


class LogRing:
    """The recent log records, kept in RAM for the page (log.hook): fixed size, oldest out first."""

    def __init__(self, n=_LOG_LINES):
        self.lines = [None] * n
        self.next = 0

    def add(self, line):
        self.lines[self.next] = line[:_LOG_WIDTH]
        self.next = (self.next + 1) % len(self.lines)

    def recent(self):
        i = self.next
        return [l for l in self.lines[i:] + self.lines[:i] if l is not None]


def static_dir():
    """www/ beside the firmware package of this slot (the build puts it there: tools/build.py)."""
    f = __file__
    i = f.rfind("/", 0, f.rfind("/"))
    return (f[:i] if i >= 0 else ".") + "/www"


def static_file(static, name):
    """The response for a static file: static/NAME.gz as it is, with Content-Encoding: gzip."""
    path = "%s/%s.gz" % (static, name)
    try:
        f = open(path, "rb")
    except OSError:
        return "the page's files are missing on this board (%s): build with tools/build.py" % path, 404
    res = Response.send_file(name, stream=f, compressed=True)
    res.headers["Cache-Control"] = "no-cache"
    return res


def post_refusal(req):
    """None when a POST may be handled, else the answer that refuses it: a body that is not JSON (what a
    cross-site form can send without a CORS preflight) or a request from another origin or site."""
    origin = req.headers.get("Origin")
    if origin is not None and origin != "http://" + req.headers.get("Host", ""):
        return answer(False, "request from another origin", 403)
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return answer(False, "request from another site", 403)
    if (req.content_type or "").split(";")[0].strip() != "application/json":
        return answer(False, "POST bodies must be application/json", 415)
    return None


def security_headers(req, res):
    """microdot after_request: the headers every answer carries."""
    for k, v in _SECURITY.items():
        res.headers[k] = v
    if req is not None and req.path.startswith("/api/"):
        res.headers["Cache-Control"] = "no-store"
    return res


class _Deadline:
    """A request's reader with one deadline for its head and body: a client that sends nothing (or one byte a
    minute) would otherwise hold a socket and a task for ever. Past the deadline it reads as the end of the
    stream, which microdot answers 400 and closes."""

    def __init__(self, reader, ms):
        self.r = reader
        self.end = time.ticks_add(time.ticks_ms(), ms)

    async def _within(self, co):
        left = time.ticks_diff(self.end, time.ticks_ms())
        try:
            if left > 0:
                return await asyncio.wait_for_ms(co, left)
        except asyncio.TimeoutError:
            pass
        co.close()
        return b""

    def readline(self):
        return self._within(self.r.readline())

    def readexactly(self, n):
        return self._within(self.r.readexactly(n))

    def read(self, n=-1):
        return self._within(self.r.read(n))


class Server(Microdot):
    """microdot with a bound on connections served at once and a deadline for each request's head and body."""

    def __init__(self):
        super().__init__()
        self.active = 0

    async def handle_request(self, reader, writer):
        if self.active >= _MAX_CONN:
            writer.close()  # refused before reading: the client sees a reset and may try again
            await writer.wait_closed()
            return
        self.active += 1
        try:
            await super().handle_request(_Deadline(reader, _HEAD_MS), writer)
        finally:
            self.active -= 1


class _Events:
    """The body of /api/events (text/event-stream): the snapshot at once, again after every change, a comment
    every _BEAT_MS while nothing changes. microdot writes what __anext__ returns and calls aclose() at the end,
    also when a write fails."""

    def __init__(self, web):
        self.web = web
        self.seen = None
        self.done = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.done:
            raise StopAsyncIteration
        model = self.web.model
        if self.seen is not None:
            try:
                self.seen = await asyncio.wait_for_ms(model.changed(self.seen), self.web.beat_ms)
            except asyncio.TimeoutError:
                return b": beat\n\n"
            if self.done:
                raise StopAsyncIteration
        else:
            self.seen = model.version()
        return b"data: " + json.dumps(model.snapshot()).encode() + b"\n\n"

    async def aclose(self):
        self.done = True
        streams = self.web.streams
        if self in streams:
            streams.remove(self)


def answer(ok, reason=None, status=None, **more):
    more["ok"] = ok
    more["reason"] = reason
    return more, status or (200 if ok else 409)


def _bad(reason):
    return {"ok": False, "reason": reason}, 400


def body(req):
    """The JSON object of a POST, or None when it is not one."""
    try:
        obj = json.loads(req.body) if req.body else {}
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _key_info(name, cfg):
    e = K.entry(K.find(name))
    t = e[1] & K.TYPE
    info = {"name": e[0], "type": ("int", "bool", "str", "list")[t], "reboot": bool(e[1] & K.REBOOT),
            "required": e[0] in _REQUIRED}
    if t == K.INT:
        info["min"] = e[3]
        info["max"] = e[4]
    elif t == K.STR:
        info["max"] = e[4]
        if e[5]:
            info["choices"] = list(e[5])
    if e[1] & K.SECRET:
        info["secret"] = True
        info["set"] = bool(cfg.get(name))  # whether one is set: never the value
    else:
        info["value"] = cfg.get(name)
    return info


class Web:
    """The page's HTTP server (microdot) over a model and the configuration. start() runs it."""

    def __init__(self, model, cfg, static=None):
        self.model = Model(model)
        self.cfg = cfg
        self.auth = webauth.Auth(cfg)
        self.static = static or static_dir()
        self.log = LogRing()
        self.streams = []
        self.beat_ms = _BEAT_MS
        self.app = app = Server()
        app.before_request(self._guard)
        app.after_request(security_headers)
        app.after_error_request(security_headers)
        for path in _STATIC:
            app.route(path)(self._file)
        get = (("/api/session", self.session), ("/api/status", self.status), ("/api/events", self.events),
               ("/api/config", self.config), ("/api/log", self.recent_log))
        post = (("/api/login", self.login), ("/api/logout", self.logout), ("/api/password", self.password),
                ("/api/start", self.start), ("/api/stop", self.stop), ("/api/limit", self.limit),
                ("/api/config", self.configure))
        for path, fn in get:
            app.route(path)(fn)
        for path, fn in post:
            app.route(path, methods=["POST"])(fn)

    async def run(self, host, port):
        """Serves until cancelled; a server that cannot start (the port taken, no network yet) tries again."""
        await self.auth.upgrade()
        log.hook = self.log.add
        while True:
            try:
                log.info(_TAG, "page on http://%s:%d/" % (host, port))
                await self.app.start_server(host=host, port=port)
            except Exception as e:
                log.error(_TAG, "server on %s:%d failed: %r" % (host, port, e))
            await asyncio.sleep_ms(10000)

    # ---- every request -------------------------------------------------------------------------------
    def _token(self, req):
        return req.cookies.get(_COOKIE)

    def _guard(self, req):
        """Refuses what a request may not do before its handler runs (microdot before_request)."""
        path = req.path
        if req.method == "POST":
            refused = post_refusal(req)
            if refused:
                return refused
        if not path.startswith("/api/") or path in _OPEN and not (path == "/api/password"
                                                                   and self.auth.password_set()):
            return None
        token = self._token(req)
        if self.auth.session(token) is None:
            return answer(False, "log in first" if self.auth.password_set() else "set a password first", 401)
        if req.method == "POST" and not self.auth.csrf_ok(token, req.headers.get("X-CSRF-Token")):
            return answer(False, "missing or wrong CSRF token", 403)
        return None

    def _file(self, req):
        return static_file(self.static, _STATIC[req.path])

    def _with_session(self, body, token, csrf):
        body["csrf"] = csrf
        res = Response(body)
        # A session cookie: no Max-Age, gone with the browser; SameSite=Strict keeps it off cross-site requests.
        res.headers["Set-Cookie"] = "%s=%s; Path=/; HttpOnly; SameSite=Strict" % (_COOKIE, token)
        return res

    # ---- the session ---------------------------------------------------------------------------------
    def session(self, req):
        auth = self.auth
        csrf = auth.session(self._token(req))
        return {"password_set": auth.password_set(), "logged_in": csrf is not None, "csrf": csrf}

    async def login(self, req):
        a = body(req)
        if a is None or not isinstance(a.get("password"), str):
            return _bad("expected {\"password\": text}")
        if not self.auth.password_set():
            return answer(False, "no password is set yet: set one first", 409)
        token, csrf, reason = await self.auth.login(a["password"])
        if token is None:
            log.warn(_TAG, "login refused from %s: %s" % (req.client_addr[0] if req.client_addr else "?", reason))
            return answer(False, reason, 429 if self.auth.wait_ms() else 401)
        return self._with_session({"ok": True, "reason": None}, token, csrf)

    def logout(self, req):
        self.auth.close(self._token(req))
        res = Response({"ok": True, "reason": None})
        res.headers["Set-Cookie"] = "%s=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict" % _COOKIE
        return res

    async def password(self, req):
        """Sets the first password (then logs this browser in), or changes it (the old one is needed; every
        other session ends)."""
        a = body(req)
        if a is None or not isinstance(a.get("password"), str):
            return _bad("expected {\"password\": text}")
        auth = self.auth
        if auth.password_set():
            ok, reason = await auth.check(a.get("old"))
            if not ok:
                return answer(False, "current password: %s" % reason, 403)
        ok, reason = await auth.set_password(a["password"])
        if not ok:
            return _bad(reason)
        log.info(_TAG, "page password set")
        token, csrf = auth.open()
        return self._with_session({"ok": True, "reason": None}, token, csrf)

    # ---- the charger ---------------------------------------------------------------------------------
    def status(self, req):
        return self.model.snapshot()

    def events(self, req):
        streams = self.streams
        if len(streams) >= _MAX_STREAMS:
            streams.pop(0).done = True  # it ends at its next event or beat
        ev = _Events(self)
        streams.append(ev)
        return ev, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-store"}

    def start(self, req):
        a = body(req)
        tag = a.get("id_tag") if a is not None else 0
        if tag == "":
            tag = None
        if tag is not None and (not isinstance(tag, str) or len(tag) > _ID_TAG_MAX):
            return _bad("id_tag: text of at most %d characters, or null for free vend" % _ID_TAG_MAX)
        ok, reason = self.model.start(tag)
        return answer(ok, reason)

    def stop(self, req):
        ok, reason = self.model.stop()
        return answer(ok, reason)

    def limit(self, req):
        a = body(req)
        amps = a.get("amps", 0) if a is not None else "?"
        if amps is not None and (isinstance(amps, bool) or not isinstance(amps, (int, float))):
            return _bad("amps: a number (0 pauses) or null (no limit)")
        ok, reason = self.model.set_limit(amps)
        return answer(ok, reason)

    def recent_log(self, req):
        return {"lines": self.log.recent()}

    # ---- the configuration ---------------------------------------------------------------------------
    def config(self, req):
        cfg = self.cfg
        return {"keys": [_key_info(n, cfg) for n in CONFIG_KEYS if K.find(n) >= 0]}

    def configure(self, req):
        """Applies {name: value} when every value passes setupcheck.check, nothing otherwise. A blank secret
        leaves the stored one."""
        a = body(req)
        if a is None or not a:
            return _bad("expected {\"Name\": value, ...}")
        errors = {}
        good = []
        for name, value in a.items():
            if name not in CONFIG_KEYS or K.find(name) < 0:
                errors[name] = "not a setting of this page"
                continue
            if value == "" and setupcheck.secret(name):
                continue
            v, reason = setupcheck.check(name, value, name in _REQUIRED)
            if reason:
                errors[name] = reason
            else:
                good.append((name, v))
        if errors:
            return {"ok": False, "reason": "nothing was changed", "errors": errors}, 400
        reboot = False
        for name, v in good:
            if K.entry(K.find(name))[1] & K.DEVICE:
                status, reason = self.cfg.set_device(name, v)
            else:
                status, reason = self.cfg.set(name, ("true" if v else "false") if isinstance(v, bool) else str(v))
            if reason:
                errors[name] = reason
            reboot = reboot or status == config.REBOOT_REQUIRED
        if errors:
            return {"ok": False, "reason": "not all were stored", "errors": errors}, 500
        log.info(_TAG, "settings changed: %s" % ", ".join(n for n, _ in good))
        return {"ok": True, "reason": None, "reboot": reboot}


def start(model, cfg):
    """The page, served by a task on the running loop at WebBind:WebPort (firmware/app.py calls this when
    WebEnabled). Returns the Web object."""
    web = Web(model, cfg)
    asyncio.create_task(web.run(cfg.get("WebBind"), cfg.get("WebPort")))
    return web
