"""The device config for tools/deploy.py: CONFIG (the keys of provision.json) checked by the firmware's own code,
which runs in the MicroPython unix port on this host and applies the file as a board does at boot, plus the checks
only an install needs (docs/decisions.md, "Deploying to a board")."""
import datetime
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")


# ---- the device config -------------------------------------------------------------------------------------
# Runs in the MicroPython unix port: the firmware's Config applies DIR/provision.json as it does at a board's
# boot; what it did not take is in provision_report ("Name: reason").
_VALIDATE = r"""
import sys, json
from firmware import config, config_keys as K
c = config.Config(sys.argv[1])
print("REPORT" + json.dumps(c.provision_report))
print("DEVICE" + json.dumps([(n, K.entry(K.find(n))[2]) for n, flags, _ in K.heads() if flags & K.DEVICE]))
"""


class ConfigError(Exception):
    def __init__(self, path, errors):
        super().__init__("%s: %d error%s" % (path, len(errors), "s" if len(errors) > 1 else ""))
        self.path = path
        self.errors = errors


def firmware_report(settings, src=ROOT):
    """What the firmware's own provisioning refuses of these settings, ["Name: reason", ...], and the device
    settings of its key table with their defaults, [(name, default), ...] in table order."""
    with tempfile.TemporaryDirectory(prefix="deploy-config") as state:
        with open(os.path.join(state, "provision.json"), "w") as f:
            json.dump(settings, f)
        script = os.path.join(state, "validate.py")
        with open(script, "w") as f:
            f.write(_VALIDATE)
        env = dict(os.environ, MICROPYPATH=".frozen:" + src)
        r = subprocess.run([MICROPYTHON, script, state], cwd=state, env=env, capture_output=True, text=True,
                           timeout=60)
    report = device = None
    for line in r.stdout.splitlines():
        if line.startswith("REPORT"):
            report = json.loads(line[6:])
        elif line.startswith("DEVICE"):
            device = json.loads(line[6:])
    if report is not None and device is not None:
        # a typo or an OCPP key: say what the file may hold
        names = ", ".join(name for name, _ in device)
        return [e + " (the device settings are %s)" % names if e.endswith(": not a device setting") else e
                for e in report], [tuple(d) for d in device]
    raise RuntimeError("the firmware's config check did not run:\n" + r.stdout + r.stderr)


# Settings a deploy leaves as the board has them unless CONFIG names them: the web page's password is its owner's,
# set on the board (docs/decisions.md, "Web page"); writing the default would open the page to whoever comes first.
KEPT = ("WebPassword",)


def load_config(path, src=ROOT, now=None):
    """(the settings to install as provision.json, the names CONFIG left out) from a CONFIG file; ConfigError
    lists every problem. Every device setting but KEPT is written, those CONFIG leaves out at the firmware's
    default: the board applies provision.json key by key, so a setting dropped from CONFIG would otherwise keep the
    value an earlier deploy gave it (a Password removed from the file would still be sent)."""
    try:
        with open(path) as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, ["cannot read it: %s" % e.strerror])
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise ConfigError(path, ["not valid JSON: %s" % e])
    if not isinstance(cfg, dict):
        raise ConfigError(path, ["must be a JSON object of device settings ({\"CentralSystemUrl\": ...})"])
    errors = []
    settings = dict(cfg)
    ca_key = _key(settings, "CentralSystemCa")
    if ca_key and isinstance(settings[ca_key], str) and settings[ca_key] and "-----BEGIN" not in settings[ca_key]:
        ca_path = os.path.join(os.path.dirname(os.path.abspath(path)), settings[ca_key])
        try:
            with open(ca_path) as f:
                settings[ca_key] = f.read()
        except OSError as e:
            errors.append("CentralSystemCa: cannot read the certificate file %s (%s); give a PEM file's path "
                          "relative to %s, or the PEM text" % (settings[ca_key], e.strerror, os.path.basename(path)))
            settings.pop(ca_key)
    pins_key = _key(settings, "Pins")
    if pins_key and isinstance(settings[pins_key], dict):
        settings[pins_key] = json.dumps(settings[pins_key], separators=(",", ":"))
    report, device = firmware_report(settings, src)
    errors += report
    refused = {e.split(":", 1)[0].lower() for e in errors}
    for name, why in (("CentralSystemUrl", "the charger needs the Central System's ws:// or wss:// URL"),
                      ("ChargeBoxId", "the charger needs the id the Central System knows it by")):
        k = _key(settings, name)
        if name.lower() not in refused and (k is None or settings[k] in ("", None)):
            errors.append("%s: missing: %s" % (name, why))
    url = settings.get(_key(settings, "CentralSystemUrl") or "", "")
    ca = settings.get(_key(settings, "CentralSystemCa") or "")
    if isinstance(url, str) and url.startswith("wss://") and not ca and "centralsystemca" not in refused:
        errors.append("CentralSystemCa: missing: a wss:// Central System needs the CA certificate that signed its "
                      "certificate (the firmware never connects to an unverified server)")
    if ca and isinstance(ca, str) and "centralsystemca" not in refused:
        why = _check_ca(ca, now)
        if why:
            errors.append("CentralSystemCa: " + why)
    if errors:
        raise ConfigError(path, errors)
    full, defaulted = {}, []
    for name, default in device:
        k = _key(settings, name)
        if k is None and name in KEPT:
            continue
        if k is None:
            defaulted.append(name)
        full[name] = settings[k] if k is not None else default
    return full, defaulted


def _key(settings, name):
    """The spelling of a setting in the file (the firmware matches names case-insensitively), or None."""
    for k in settings:
        if k.lower() == name.lower():
            return k
    return None


def _check_ca(pem, now=None):
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as e:
        return "not a PEM certificate (%s)" % e
    if len(certs) != 1:
        return ("%d certificates; the firmware loads one (the OCPP session trusts the first): give the CA that "
                "signed the Central System's certificate" % len(certs))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = certs[0]
    if cert.not_valid_after_utc < now:
        return "the certificate (%s) expired on %s" % (cert.subject.rfc4514_string(),
                                                      cert.not_valid_after_utc.date().isoformat())
    return None


def provision_bytes(settings):
    return (json.dumps(settings, indent=1) + "\n").encode()
