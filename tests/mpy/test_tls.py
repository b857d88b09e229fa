# lib/tls.py on the unix port: certificates out of PEM text, and the verifying context the clients take as ssl=.
import binascii
import tinytest
from lib import tls


def _pem(der):
    b64 = binascii.b2a_base64(der, newline=False).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def test_pem_to_der():
    # (was lib/ws.py's pem_to_der, which took the first certificate: what the session and the MQTT front end
    # still take, as tls.certificates(text)[:1])
    der = b"\x30\x82\x01\x0a" + bytes(range(200))
    pem = _pem(der)
    assert tls.certificates(pem)[:1] == [der]
    assert tls.certificates(pem.encode())[:1] == [der]
    assert tls.certificates(("junk\r\n" + pem + pem).replace("\n", "\r\n"))[:1] == [der]
    assert tls.certificates(der) == [der]
    e = tinytest.raises(ValueError, tls.context, tls.certificates("not a certificate"))
    assert "PEM" in str(e)


def test_ca_texts_give_every_certificate():
    der1, der2 = b"\x30\x03abc", b"\x30\x03xyz"
    pem = "".join("-----BEGIN CERTIFICATE-----\n%s-----END CERTIFICATE-----\n" % binascii.b2a_base64(d).decode()
                  for d in (der1, der2))
    assert tls.certificates(pem) == [der1, der2]
    assert tls.certificates(der1) == [der1]
    assert tls.certificates("no certificate here") == []
    e = tinytest.raises(ValueError, tls.certificates, "-----BEGIN CERTIFICATE-----\nMIIB")
    assert "END" in str(e)
    e = tinytest.raises(ValueError, tls.certificates, "-----BEGIN CERTIFICATE-----\nM!\n-----END CERTIFICATE-----")
    assert "base64" in str(e)


def test_context_verifies_and_refuses_what_is_not_a_certificate():
    import ssl

    e = tinytest.raises(ValueError, tls.context, [b"\x30\x03abc"])  # DER in shape, not a certificate
    assert str(e)
    e = tinytest.raises(ValueError, tls.context, [])
    assert "no certificate" in str(e)
    ctx = tls.context(tls.certificates(_TEST_CA))
    assert ctx.verify_mode == ssl.CERT_REQUIRED  # never MicroPython's default CERT_NONE


# A self-signed CA made for this test (EC P-256, with the cryptography package), valid until 2126.
_TEST_CA = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBLzCB1qADAgECAgEBMAoGCCqGSM49BAMCMBYxFDASBgNVBAMMC3Rlc3RfdGxz\n"
    "IENBMCAXDTI2MDEwMTAwMDAwMFoYDzIxMjYwMTAxMDAwMDAwWjAWMRQwEgYDVQQD\n"
    "DAt0ZXN0X3RscyBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABP/+k3+gUdEs\n"
    "pj4gN6yPX0wNACnlaReP7Umhg3osOGqVpR0XqY60Uhm9un9sZ8HQAPcyz+eC/mdT\n"
    "+DN/dqc4KFKjEzARMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh\n"
    "AKgEfxaZOGoJ73IrBj8D9ayzeUF3PxseEtgXe+8L64e9AiBQN0wpkFM89mn1r8Vp\n"
    "hitjp8WHZgiubse6YfZalLNb0A==\n"
    "-----END CERTIFICATE-----\n")


tinytest.run(globals())
