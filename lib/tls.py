# TLS for the clients in lib/ (ws, mqtt, http, ftp): CA certificates out of PEM text, and the verifying client
# context that each of those clients takes from its caller as ssl=. The caller builds the context once and keeps
# it: it holds the mbedTLS entropy and DRBG state, a few KB that a fragmented heap may later not have in one piece.
import binascii

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


def certificates(text):
    """Every certificate of a PEM text (str or bytes), or one DER certificate -> a list of DER bytes, empty when
    the text holds none. Raises ValueError for a PEM block without its END line or with bad base64."""
    if isinstance(text, (bytes, bytearray)):
        if text[:1] == b"\x30":  # ASN.1 SEQUENCE: already DER
            return [bytes(text)]
        text = str(text, "utf-8")
    out = []
    i = 0
    while True:
        b = text.find(_BEGIN, i)
        if b < 0:
            return out
        b += len(_BEGIN)
        e = text.find(_END, b)
        if e < 0:
            raise ValueError("a PEM certificate has no END line")
        try:
            out.append(binascii.a2b_base64("".join(text[b:e].split())))
        except ValueError:
            raise ValueError("a PEM certificate has bad base64")
        i = e + len(_END)


def context(ders):
    """A verifying client SSLContext (CERT_REQUIRED: MicroPython's default is CERT_NONE) trusting each DER
    certificate of ders. Each is loaded by a load_verify_locations() call of its own, which mbedTLS adds to the
    trusted chain (a DER buffer of several certificates would load only the first). Raises ValueError with the
    reason when ders is empty or a certificate is refused."""
    if not ders:
        raise ValueError("no certificate (neither PEM nor DER)")
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    for der in ders:
        try:
            ctx.load_verify_locations(cadata=der)
        except (ValueError, OSError) as e:
            raise ValueError(str(e))
    return ctx
