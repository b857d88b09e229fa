"""Throw-away test PKI for the demo Central System and the TLS tests.

make_pki(dirpath) writes PEM files and returns their paths:
  ca           test root CA (EC P-256 or RSA 2048, SHA-256) that signs the server certificate
  server_cert  server certificate, CN 127.0.0.1, SAN IP 127.0.0.1 + DNS localhost
  server_key   its private key (PKCS#8, unencrypted)
  other_ca     an unrelated root CA, for "wrong CA" tests

CLI: .venv/bin/python tools/pki.py [--rsa] DIR
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short enough that a leaked test key is useless soon, long enough for any CI run.
VALID_DAYS = 30


def _name(cn, org="Open EVSE Test"):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _validity(builder):
    # Backdate a little: the MicroPython clock may lag the host's by seconds.
    now = datetime.datetime.now(datetime.timezone.utc)
    return (builder.not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def _key_usage(cert_sign):
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not cert_sign,
        data_encipherment=False, key_agreement=not cert_sign, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def new_key(kind="ec"):
    """kind "ec" = P-256 (small, fast on the ESP32), "rsa" = RSA 2048 (OCPP-J 1.6 base security)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError("key kind must be 'ec' or 'rsa', not %r" % (kind,))


def make_ca(cn, kind="ec"):
    """Self-signed root: (certificate, private key)."""
    key = new_key(kind)
    name = _name(cn)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    return _validity(builder).sign(key, hashes.SHA256()), key


def make_server_cert(ca_cert, ca_key, hosts=("127.0.0.1", "localhost"), kind="ec"):
    """Leaf certificate for the given IPs/host names, signed by the CA."""
    key = new_key(kind)
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (x509.CertificateBuilder().subject_name(_name(hosts[0]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    return _validity(builder).sign(ca_key, hashes.SHA256()), key


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(dirpath, kind="ec"):
    """Write a fresh CA, server cert/key and an unrelated CA into dirpath; return the paths."""
    os.makedirs(dirpath, exist_ok=True)
    ca_cert, ca_key = make_ca("Open EVSE Test Root CA", kind)
    srv_cert, srv_key = make_server_cert(ca_cert, ca_key, kind=kind)
    other_cert, _ = make_ca("Unrelated Test Root CA", kind)
    join = lambda name: os.path.join(dirpath, name)  # noqa: E731
    paths = dict(
        ca=_write(join("ca.pem"), _cert_pem(ca_cert)),
        server_cert=_write(join("server.pem"), _cert_pem(srv_cert)),
        server_key=_write(join("server.key"), _key_pem(srv_key)),
        other_ca=_write(join("other_ca.pem"), _cert_pem(other_cert)),
    )
    os.chmod(paths["server_key"], 0o600)
    return paths


def main(argv):
    kind = "ec"
    if argv[:1] == ["--rsa"]:
        kind, argv = "rsa", argv[1:]
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: pki.py [--rsa] DIR   (writes ca.pem, server.pem, server.key, other_ca.pem;"
              " EC P-256 unless --rsa)")
        return 2
    for role, path in make_pki(argv[0], kind).items():
        print("%-12s %s" % (role, path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
