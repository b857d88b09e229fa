# The Board interface: the only door between the firmware and the hardware.
#
# hal/esp32.py (the real PCB) and hal/unix.py (the virtual board of tools/sim.py) implement every method below
# with the same names and meanings; they do not inherit from this class, so that a board costs no RAM for it.
# This file is the reference (docs/architecture.md "hal/") and tests check both boards against it.
# Nothing in hal/ imports firmware/.
#
# Units: voltages in mV, resistances in ohms, times in integer ms, PWM duty in permille (0.1 %).


class Board:
    # Set by the constructor: where "flash" lives ("/" on the ESP32, the --state DIR on unix).
    state_dir = "/"
    # True when the board reaches the network only through its WiFi radio (the ESP32): a board without a WiFi
    # network configured then cannot work and the first-boot setup asks for one (firmware/provision.py).
    # False on the virtual board, whose host is always on the network.
    wifi_required = True

    def __init__(self):
        # Constructs and connects everything (pins, PWM, ADC, link to the simulator).
        raise NotImplementedError

    def set_pwm(self, permille):
        # CP generator. 1000 = steady +12 V (no PWM, X1); 0 = steady -12 V (state F);
        # 1..999 = 1 kHz PWM with that duty in 0.1 % units (IEC 61851-1 A.8: 16 A -> 267).
        raise NotImplementedError

    def set_contactor(self, on):
        # Main relay coil. Safe to call from the start_watch callback.
        raise NotImplementedError

    def set_lock(self, locked):
        # Socket e-lock motor/solenoid command.
        raise NotImplementedError

    def set_led(self, name, on):
        # name: "green" | "blue" | "red"; anything else raises ValueError.
        raise NotImplementedError

    def read_cp(self):
        # -> (hi_mv, lo_mv): CP plateau voltages. hi = the high phase (gives the state A..F),
        # lo = the low phase (-12 V while PWM runs; near 0 V = diode missing). Without PWM both are the steady level.
        raise NotImplementedError

    def read_pp_ohms(self):
        # -> int PP-PE resistance, or None when open (no cable). Band checking is the firmware's job.
        raise NotImplementedError

    def lock_feedback(self):
        # -> True when the lock's feedback contact confirms "locked".
        raise NotImplementedError

    def contactor_feedback(self):
        # -> True when the contacts are closed (auxiliary contact); closed while commanded open = welded.
        raise NotImplementedError

    def rcd_tripped(self):
        # -> True while the residual current device reports a trip.
        raise NotImplementedError

    def local_limit_da(self):
        # -> int local current limit in 0.1 A from a load-management input (house energy manager, DIP switch),
        # or None when there is none. The arbiter takes the minimum of it and every other limit; 0 = stop.
        raise NotImplementedError

    def take_block_ms(self):
        # -> int ms the firmware's loop must stall on purpose, once (a test hook: tools/sim.py "mcu" command
        # on the virtual board); always 0 on real hardware.
        raise NotImplementedError

    def poll_tag(self):
        # -> next RFID UID presented (hex string), or None when none is waiting. Never blocks.
        raise NotImplementedError

    def reset_cause(self):
        # -> "power" (power-on), "watchdog" (restarted after a crash/hang) or "soft" (our own reset()).
        raise NotImplementedError

    def poll_console(self, mask=False):
        # -> next line typed on the service console, without its line end ("" for an empty line), or None.
        # Never blocks. The ESP32's console is the USB serial REPL: it echoes what is typed, or "*" for each
        # character while mask is True (a password); the virtual board gets whole lines and ignores mask.
        raise NotImplementedError

    # ---- WiFi station (firmware/wifi.py supervises it; nothing here retries or waits) ----

    def wifi_join(self, ssid, password):
        # Start joining the network (returns at once; wifi_status() tells how it goes). A link that is up on the
        # same ssid is kept; any other is dropped first. password "" = an open network.
        raise NotImplementedError

    def wifi_status(self):
        # -> (state, reason): state "off" (not joining), "joining", "up" (joined, with an address) or "failed";
        # reason None, or for "failed" a short text for a person: "wrong password", "no AP found", ...
        raise NotImplementedError

    def wifi_ip(self):
        # -> the board's IPv4 address as text while the link is up, else None.
        raise NotImplementedError

    def wifi_leave(self):
        # Drop the link and stop every attempt to join (the radio stays on).
        raise NotImplementedError

    # ---- WiFi access point (the first-boot setup over the web, firmware/websetup.py) ----

    def ap_start(self, ssid, password):
        # Open the board's own access point and return its SSID; ssid None = the board's name for it,
        # "EVSE-" and the last 3 bytes of the radio's MAC in hex (neighbouring boards differ); password ""
        # = an open network, else WPA2 (8-63 characters). The station may join a network meanwhile.
        # Raises OSError when the board has no access point to offer.
        raise NotImplementedError

    def ap_ip(self):
        # -> the board's address on its access point while it is open ("192.168.4.1" on the ESP32), else None.
        raise NotImplementedError

    def ap_stop(self):
        # Close the access point (the station is left as it is).
        raise NotImplementedError

    def open_uart(self, baud, parity, stop):
        # -> asyncio stream (read/readexactly/write/drain) on the RS485 bus, 8 data bits.
        # parity: None | "N" | "E" | "O" (machine.UART's 0 = even, 1 = odd are accepted too); stop: 1 | 2.
        raise NotImplementedError

    def start_watch(self, period_ms, fn):
        # Call fn() every period_ms OFF the asyncio loop (machine.Timer on the ESP32, a _thread on unix), so the
        # safety watch runs while the loop is busy. fn must be short and allocate little.
        raise NotImplementedError

    def wdt_feed(self):
        # Feed the hardware watchdog (the first call arms it).
        raise NotImplementedError

    def reset(self):
        # Reboot; never returns (unix: the process exits with code 3, which tools/sim.py treats as a reboot).
        raise NotImplementedError

    def ticks_ms(self):
        # Monotonic ms (time.ticks_ms: wraps, compare with time.ticks_diff).
        raise NotImplementedError


# Every name a board must provide; tests compare implementations against it.
METHODS = (
    "set_pwm", "set_contactor", "set_lock", "set_led", "read_cp", "read_pp_ohms", "lock_feedback",
    "contactor_feedback", "rcd_tripped", "local_limit_da", "take_block_ms", "poll_tag", "poll_console", "reset_cause", "open_uart",
    "start_watch", "wdt_feed", "reset", "ticks_ms", "wifi_join", "wifi_status", "wifi_ip", "wifi_leave",
    "ap_start", "ap_ip", "ap_stop",
)
LEDS = ("green", "blue", "red")
