# File transfers for the FirmwareManagement engines (firmware/ota/update.py, firmware/diag/upload.py): one URL
# scheme dispatch over lib/http.py and lib/ftp.py, the TLS context from the configured CA set, one error type with
# a reason for the log, URLs with their password masked for that log, and the engines' common status reporting
# (Engine). Imported only while an engine runs; the
# transfer libraries only when a transfer starts.
from micropython import const

_TIMEOUT_MS = const(30000)  # per read and write: a slow CDN or a busy FTP server, not a dead one
_TICK_MS = const(1000)      # the engines' waits look at the clock and a new request once a second
_RESEND_MS = const(60000)   # an owed final status is sent again after this, or at the next connection
SCHEMES = ("http", "https", "ftp")


class Failed(Exception):
    """A transfer that did not work; str() is the reason for the log. final: trying again cannot help (a
    configuration error, a full flash), so the engine gives up without using its retries."""

    def __init__(self, reason, final=False):
        super().__init__(reason)
        self.final = final


def scheme(url):
    i = url.find("://") if isinstance(url, str) else -1
    return url[:i].lower() if i > 0 else ""


def check_url(url):
    """Raises ValueError with a reason unless url is an http, https or ftp URL the clients can use."""
    from lib import url as _url

    s = scheme(url)
    if s not in SCHEMES:
        raise ValueError("location must be an http://, https:// or ftp:// URL")
    _url.split(url)  # ValueError: no host, a bad port, a control character...


def safe_url(url):
    """url with the password (user:password@) replaced by ***, for the log."""
    i = url.find("://")
    if i <= 0:
        return url
    end = i + 3
    while end < len(url) and url[end] not in "/?#":
        end += 1
    at = url.rfind("@", i + 3, end)  # lib/url.py: the host follows the last '@' (a sloppy password may hold one)
    c = url.find(":", i + 3, at) if at > 0 else -1
    return url if c < 0 else url[:c + 1] + "***" + url[at:]


def tls_context(cas):
    """A verifying SSLContext (lib/tls.py) trusting every certificate of every text in cas (PEM, possibly several
    certificates each, or DER). Raises Failed (final) when there is none or one is refused."""
    from lib import tls

    ders = []
    for text in cas:
        if text:
            try:
                ders += tls.certificates(text)
            except ValueError as e:
                raise Failed("CA certificate: %s" % e, True)
    if not ders:
        raise Failed("https needs a CA certificate: set TransferCa (or CentralSystemCa)", True)
    try:
        return tls.context(ders)
    except ValueError as e:
        raise Failed("bad CA certificate: %s" % e, True)


class Client:
    """Transfers through one buffer, with the TLS context built at the first https transfer and kept for the
    retries. cas: the CA texts to trust (e.g. (TransferCa, CentralSystemCa))."""

    def __init__(self, cas=(), buf_size=1024, timeout_ms=_TIMEOUT_MS):
        self.cas = cas
        self.buf = bytearray(buf_size)
        self.timeout_ms = timeout_ms
        self._ctx = None

    def _ssl(self, url):
        if scheme(url) != "https":
            return None
        if self._ctx is None:
            self._ctx = tls_context(self.cas)
        return self._ctx

    async def get(self, url, sink):
        """Streams url into sink(memoryview) -> bytes received. Raises Failed."""
        s = scheme(url)
        t = self.timeout_ms
        try:
            if s == "ftp":
                from lib import ftp

                try:
                    return await ftp.retr(url, sink, self.buf, t, t)
                except ftp.FTPError as e:
                    raise Failed(str(e))
            from lib import http

            try:
                return await http.get(url, sink, self.buf, self._ssl(url), None, t, t)
            except http.HTTPError as e:
                raise Failed(str(e))
        except OSError as e:  # the sink's flash writes
            raise Failed("flash: %s" % (e,))

    async def put(self, url, f, length, content_type="text/plain"):
        """Uploads the first length bytes of the file f (opened "rb") to url: FTP STOR, or HTTP PUT; a server
        that refuses PUT with 405 gets the same body by POST. -> bytes sent (FTP) or the HTTP status. Raises
        Failed."""
        t = self.timeout_ms
        if scheme(url) == "ftp":
            from lib import ftp

            try:
                return await ftp.stor(url, f.readinto, length, self.buf, t, t)
            except ftp.FTPError as e:
                raise Failed(str(e))
        from lib import http

        headers = {"Content-Type": content_type}
        ssl = self._ssl(url)
        try:
            try:
                return await http.put(url, f.readinto, length, self.buf, ssl, headers, t, t)
            except http.HTTPError as e:
                if e.status != 405:
                    raise
            f.seek(0)
            return await http.post(url, f.readinto, length, self.buf, ssl, headers, t, t)
        except http.HTTPError as e:
            raise Failed(str(e))


class Replaced(Exception):
    """A newer request replaced the one an engine was working on."""


class Engine:
    """The status reporting both engines share (firmware/ota/update.py, firmware/diag/upload.py). A subclass sets
    notify (async status -> True when the Central System has it), _sleep (async ms), _gen (its request counter),
    _online (False until accepted()), and as class attributes _TAG (its log tag) and _WHAT (its notification)."""

    _patience = 0  # ms an engine started offline waits in all for BootNotification Accepted before a status
    slept_ms = 0   # since the engine started (update.py's trial deadline counts it)

    def accepted(self):
        """BootNotification Accepted, after every boot and reconnect: owed statuses go again."""
        self._online = True

    def _check(self, gen):
        if self._gen != gen:
            raise Replaced()

    async def _nap(self, ms=_TICK_MS):
        await self._sleep(ms)
        self.slept_ms += ms

    async def _say(self, status):
        # An intermediate status: sent once, lost when offline. An engine resumed at boot (update.py: a
        # download or an installation cut by a reset) gets here before the charger is registered: it waits for
        # BootNotification Accepted first, or the Central System would miss the resumed step's status; for
        # _patience ms at most in all, then it goes on offline (an update never waits for the Central System)
        while not self._online and self._patience > 0:
            await self._nap(100)
            self._patience -= 100
        try:
            await self.notify(status)
        except Exception as e:
            from firmware import log

            log.warn(self._TAG, "%s %s not sent: %r" % (self._WHAT, status, e))

    async def _deliver(self, status, gen):
        # A final status: sent until the Central System has it, at each connection and every minute; gen: the
        # request it belongs to (Replaced when a newer one comes meanwhile), None for none
        while True:
            try:
                if await self.notify(status):
                    return
            except Exception:
                pass
            self._online = False
            waited = 0
            while not self._online and waited < _RESEND_MS:
                await self._nap()
                waited += _TICK_MS
                if gen is not None:
                    self._check(gen)


_CLIENTS = ("lib.http", "lib.ftp", "lib.tcp", "lib.url", "lib.tls")


def drop(names, other, shared=("firmware.transfer",) + _CLIENTS):
    """Removes modules from sys.modules (and from their package) so that their code leaves the heap once nothing
    holds them. The shared ones (this module and the transfer clients) go too unless the module `other` (the
    other engine) is loaded. drop((), other, _CLIENTS) lets the clients go between transfers."""
    import sys
    from firmware import unload

    unload(*(names if other in sys.modules else names + shared))


def drop_clients(other):
    """The transfer clients out of the heap (after a download, before the installation needs the room)."""
    drop((), other, _CLIENTS)
