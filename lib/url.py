# URL splitting for the transfer clients (lib/http.py, lib/ftp.py): scheme://[user[:password]@]host[:port]/path
# (RFC 3986 §3). Knows no scheme's default port: the caller fills that in.

_HEX = b"0123456789abcdefABCDEF"


def unquote(text):
    """Percent-decodes a str (RFC 3986 §2.1) -> bytes; raises ValueError on a bad %XX."""
    raw = text.encode()
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            hexpair = raw[i + 1:i + 3]
            if len(hexpair) < 2 or not all(h in _HEX for h in hexpair):
                raise ValueError("bad percent escape in URL")
            out.append(int(hexpair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def split(url):
    """-> (scheme, user, password, host, port, path). scheme is lower case; user and password are percent-decoded
    bytes, or None when the URL has none; port is an int, or None when the URL gives none; path is the rest as
    written (query included, fragment dropped), "/" at least. Raises ValueError with a message for a user."""
    i = url.find("://")
    if i <= 0:
        raise ValueError("not an absolute URL: %s" % url)
    scheme = url[:i].lower()
    rest = url[i + 3:]
    j = 0
    while j < len(rest) and rest[j] not in "/?#":
        j += 1
    authority = rest[:j]
    path = rest[j:].split("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    user = password = None
    at = authority.rfind("@")  # a sloppy password may hold an unencoded '@': the host follows the last one
    if at >= 0:
        cred = authority[:at]
        authority = authority[at + 1:]
        c = cred.find(":")
        if c >= 0:
            user, password = unquote(cred[:c]), unquote(cred[c + 1:])
        else:
            user = unquote(cred)
    port = None
    if authority.startswith("["):  # IPv6 literal (RFC 3986 §3.2.2)
        e = authority.find("]")
        if e < 0:
            raise ValueError("bad IPv6 address in URL: %s" % url)
        host = authority[1:e]
        tail = authority[e + 1:]
    else:
        c = authority.rfind(":")
        host = authority if c < 0 else authority[:c]
        tail = "" if c < 0 else authority[c:]
    if tail:
        try:
            port = int(tail[1:]) if tail[0] == ":" else 0
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError("bad port in URL: %s" % url)
    if not host:
        raise ValueError("no host in URL: %s" % url)
    for ch in host + path:
        if ch <= " " or ch == "\x7f":  # would break the request line (or smuggle a second one)
            raise ValueError("space or control character in URL: %r" % url)
    return scheme, user, password, host, port, path
