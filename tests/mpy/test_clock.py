import tinytest
from firmware import clock


def test_iso_round_trip():
    for text, epoch in (("1970-01-01T00:00:00Z", 0), ("2000-02-29T12:34:56Z", 951827696),
                        ("2026-11-25T00:57:26Z", 1795568246), ("2100-03-01T00:00:00Z", 4107542400)):
        assert clock.parse_iso(text) == epoch, (text, clock.parse_iso(text))
        assert clock.iso(epoch) == text


def test_parse_offsets_and_fractions():
    assert clock.parse_iso("2026-11-25T01:57:26.123+01:00") == 1795568246
    assert clock.parse_iso("2026-11-24T23:57:26-01:00") == 1795568246
    assert clock.parse_iso("2026-11-25T00:57:26") == 1795568246


def test_parse_rejects_garbage():
    for text in ("", "yesterday", "2026-13-01T00:00:00Z", "2026-11-25 00:57", "2026-11-25T00:57:26+0100"):
        assert clock.parse_iso(text) is None, text


def test_set_now():
    clock.set_now(1795568246)
    assert abs(clock.now() - 1795568246) <= 1
    assert clock.synced


tinytest.run(globals())
