# First-boot setup over the web (docs/decisions.md, "Web page"): a board with no WiFi network configured opens
# its own access point and serves the setup form there (www/setup.html), while the console setup
# (firmware/provision.py) waits for answers too: whichever is finished first configures the board.
#
# The form asks what the console asks, and every answer goes through the same check (firmware/setupcheck.py), so
# a value refused on one is refused on the other with the same words. The WiFi network is tried before the
# settings are stored, as on the console; a failed join is shown and the person may keep the settings anyway.
# The form may also set the web page's password (stored hashed, and the page is switched on): then the page is
# protected from its first start.
#
# Runs before the charger is built, like the console setup: the heap is the setup's. Unloaded with provision.
import asyncio
from firmware import config, log, setupcheck, web, webauth
from firmware import config_keys as K

_TAG = "setup"
# The questions, in the console's order: (key, required).
FIELDS = (("WifiSsid", True), ("WifiPassword", False), ("CentralSystemUrl", True), ("ChargeBoxId", True),
          ("Password", False), ("MeterModel", False), ("Variant", False), ("MaxCurrent", False),
          ("WebPassword", False))
_STATIC = {"/": "setup.html", "/setup.js": "setup.js", "/app.css": "app.css"}


class Setup:
    """The setup form's server. finish(answers) stores the answers (raises OSError when the flash will not take
    them); join(ssid, password) -> (True, address) | (False, reason) tries a network. done is set once stored."""

    def __init__(self, cfg, join, finish, wifi_required=True, static=None):
        self.cfg = cfg
        self.join = join
        self.finish = finish
        self.wifi_required = wifi_required
        self.static = static or web.static_dir()
        self.answers = None
        self.done = asyncio.Event()
        self.app = app = web.Server()
        app.after_request(web.security_headers)
        app.after_error_request(web.security_headers)
        for path in _STATIC:
            app.route(path)(self._file)
        app.route("/api/setup")(self.form)
        app.route("/api/setup", methods=["POST"])(self.submit)

    def _file(self, req):
        return web.static_file(self.static, _STATIC[req.path])

    def _required(self, name, required):
        return required and (name != "WifiSsid" or self.wifi_required)

    def form(self, req):
        """The questions with the current values (never a secret's) and what provision.json had wrong."""
        cfg = self.cfg
        fields = []
        for name, required in FIELDS:
            e = K.entry(K.find(name))
            f = {"name": name, "required": self._required(name, required), "secret": bool(e[1] & K.SECRET)}
            if e[1] & K.TYPE == K.STR and e[5]:
                f["choices"] = list(e[5])
            if e[1] & K.TYPE == K.INT:
                f["min"] = e[3]
                f["max"] = e[4]
            if not f["secret"]:
                f["value"] = cfg.get(name)
            fields.append(f)
        return {"fields": fields, "report": cfg.provision_report, "wifi_required": self.wifi_required}

    async def submit(self, req):
        """{name: text, ..., "keep_wifi": bool} -> 400 with every refusal, 409 when the WiFi network could not
        be joined (keep_wifi: store anyway), 200 once stored. A setting left out keeps its current value."""
        refused = web.post_refusal(req)
        if refused:
            return refused
        a = web.body(req)
        if a is None:
            return {"ok": False, "reason": "expected a JSON object"}, 400
        answers = {}
        errors = {}
        for name, required in FIELDS:
            value = a.get(name)
            if value is None:  # not answered: the current value, as Enter alone on the console
                value = "" if setupcheck.secret(name) else self.cfg.get(name)
            if name == "WebPassword":
                if value:
                    why = webauth.password_rule(value)
                    if why:
                        errors[name] = why
                continue
            v, why = setupcheck.check(name, value, self._required(name, required))
            if why:
                errors[name] = why
            else:
                answers[name] = v
        if errors:
            return {"ok": False, "reason": "some answers were refused", "errors": errors}, 400
        if answers["WifiSsid"] and not a.get("keep_wifi"):
            ok, detail = await self.join(answers["WifiSsid"], answers["WifiPassword"])
            if not ok:
                return {"ok": False, "reason": "could not join %s: %s" % (answers["WifiSsid"], detail),
                        "wifi": detail}, 409
        if a.get("WebPassword"):
            answers["WebPassword"] = await webauth.make_hash(a["WebPassword"])
            answers["WebEnabled"] = True
        try:
            self.finish(answers)
        except OSError as e:
            return {"ok": False, "reason": str(e)}, 500
        log.info(_TAG, "stored over the web: charge box %s, Central System %s" % (answers["ChargeBoxId"],
                                                                                answers["CentralSystemUrl"]))
        self.answers = answers
        self.done.set()
        return {"ok": True, "reason": None, "ssid": answers["WifiSsid"]}


async def serve(board, cfg, join, finish, wifi_required):
    """Opens the access point and serves the form until the setup is stored (returns the answers) or the task is
    cancelled (the console finished first). Returns None at once when the board has no access point."""
    try:
        ssid = board.ap_start(None, "")
    except OSError as e:
        log.info(_TAG, "no setup over the web: %s" % (e,))
        return None
    setup = Setup(cfg, join, finish, wifi_required)
    host = board.ap_ip() or "0.0.0.0"
    port = cfg.get("WebPort")
    server = asyncio.create_task(setup.app.start_server(host=host, port=port))
    print("  or join the WiFi network %s and open http://%s%s/" % (ssid, host, "" if port == 80 else ":%d" % port))
    try:
        await setup.done.wait()
        await asyncio.sleep_ms(500)  # the answer leaves before the server and the access point go
        return setup.answers
    finally:
        if setup.app.server is not None:
            setup.app.shutdown()
        server.cancel()
        board.ap_stop()
