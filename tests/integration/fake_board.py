"""A board on a serial port for the tools/deploy.py tests, played by the MicroPython unix port.

    socat pty,link=PORT,raw,echo=0 exec:"PYTHON tests/integration/fake_board.py",pty,raw,echo=0,stderr
    environment: FAKE_BOARD_FLASH=DIR (its flash), FAKE_BOARD_HEAP=160wK (its heap, -X heapsize),
                 FAKE_BOARD_LOG=FILE (optional: every byte in and out, for debugging)

socat makes PORT, the board's serial port; this supervisor sits between it (stdin/stdout) and the unix port, so
that mpremote meets what it meets on a board:
  REPL  `micropython -X heapsize=HEAP -i fake_board_repl.py DIR` on a pseudo-terminal of its own; bytes pass both
        ways (raw REPL, raw paste, fs commands work as they are). The unix port exits on a soft reset (Ctrl-D, code
        0): the supervisor prints "MPY: soft reboot", starts it again and, when the host had the raw REPL, enters
        it again (Ctrl-A), as a board comes back. machine.reset() exits with code 66: a hard reset, so
  RUN   the board boots its firmware from its flash: tools/sim.py --flash-code --state DIR --heap HEAP plays the
        hardware around the MCU and runs DIR/boot.py and DIR/main.py, and the firmware's log (the sim's "[mcu] "
        lines) goes out on the port, as a board prints it on its UART. A Ctrl-C from the host stops it and gives
        the REPL again, as Ctrl-C interrupts main.py on a board.
It powers up into the REPL. It exits (stopping what it started) when the port closes or on SIGTERM/SIGHUP.
"""
import os
import pty
import select
import signal
import subprocess
import sys
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
HARD_RESET = 66  # fake_board_repl.py's machine.reset()
CTRL_A, CTRL_B, CTRL_C = b"\x01", b"\x02", b"\x03"


class Stop(Exception):
    pass


def dbg(*a):
    if os.environ.get("FAKE_BOARD_LOG"):
        with open(os.environ["FAKE_BOARD_LOG"], "a") as f:
            f.write(" ".join(repr(x) for x in a) + "\n")


def out(data):
    dbg("out", data)
    try:
        os.write(1, data)
    except OSError:
        raise Stop()


def host_read():
    try:
        data = os.read(0, 4096)
    except OSError:
        data = b""
    if not data:
        raise Stop()  # the port was closed: the test is over
    dbg("in", data)
    return data


class FakeBoard:
    def __init__(self, flash, heap):
        self.flash = flash
        self.heap = heap
        self.raw = False     # the host has the raw REPL (Ctrl-A seen last, not Ctrl-B)
        self.child = None
        self.master = None
        self.pending = b""   # host bytes for the next REPL (typed while the board was busy resetting)

    def track(self, data):
        """Host bytes, noting whether they leave the raw REPL on (Ctrl-A) or off (Ctrl-B)."""
        a, b = data.rfind(CTRL_A), data.rfind(CTRL_B)
        if a != b:
            self.raw = a > b
        return data

    # ---- REPL ----
    def start_repl(self):
        master, slave = pty.openpty()
        tty.setraw(slave)
        self.child = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=" + self.heap, "-i", os.path.join(HERE, "fake_board_repl.py"),
             self.flash], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env=dict(os.environ, MICROPYPATH=".frozen"))
        os.close(slave)
        self.master = master

    def repl(self):
        """Pumps bytes until the unix port exits; returns its exit code. Host bytes wait until its first
        prompt: the unix port switches its terminal to raw mode with TCSAFLUSH, which drops input typed ahead."""
        self.start_repl()
        prompted = b""
        try:
            while True:
                ready, _, _ = select.select([0, self.master], [], [])
                if 0 in ready:
                    data = self.track(host_read())
                    if prompted is None:
                        os.write(self.master, data)
                    else:
                        self.pending += data
                if self.master in ready:
                    try:
                        data = os.read(self.master, 4096)
                    except OSError:  # EIO: the unix port closed its terminal, it is exiting
                        data = b""
                    if not data:
                        return self.child.wait()
                    out(data)
                    if prompted is not None:
                        prompted += data
                        if b">>> " in prompted:
                            prompted = None
                            os.write(self.master, self.pending)
                            self.pending = b""
        finally:
            os.close(self.master)
            self.master = None
            if self.child.poll() is None:
                self.child.kill()
                self.child.wait()
            self.child = None

    # ---- firmware ----
    def run_firmware(self):
        """The board after a hard reset: the firmware from the flash until the host sends Ctrl-C."""
        self.child = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tools", "sim.py"), "--flash-code", "--state", self.flash,
             "--control", "0", "--heap", self.heap], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        fd = self.child.stdout.fileno()
        buf = b""
        try:
            while True:
                ready, _, _ = select.select([0, fd], [], [])
                if 0 in ready:
                    data = host_read()
                    i = data.find(CTRL_C)
                    if i >= 0:
                        self.pending = self.track(data[i + 1:])
                        return
                if fd in ready:
                    data = os.read(fd, 4096)
                    if not data:
                        out(b"[fake board: the simulator exited with %d]\r\n" % self.child.wait())
                        self.child = None
                        self.wait_for_ctrl_c()
                        return
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.startswith(b"[mcu] "):  # the sim's own lines are not on a board's UART
                            out(line[6:].rstrip(b"\r") + b"\r\n")
        finally:
            self.stop_child()

    def wait_for_ctrl_c(self):
        while True:
            data = host_read()
            i = data.find(CTRL_C)
            if i >= 0:
                self.pending = self.track(data[i + 1:])
                return

    def stop_child(self):
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()  # the sim stops its MCU and meter on SIGTERM
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def main(self):
        while True:
            code = self.repl()
            if code == HARD_RESET:
                self.raw = False  # a board comes out of a reset with the friendly REPL
                self.run_firmware()
                out(b"\r\n")
                continue
            # Ctrl-D (a soft reset) or anything else that ended it: the board restarts its interpreter
            out(b"MPY: soft reboot\r\n")
            if self.raw:
                self.pending = b"\r" + CTRL_A + self.pending


def main():
    board = FakeBoard(os.path.abspath(os.environ["FAKE_BOARD_FLASH"]), os.environ.get("FAKE_BOARD_HEAP", "160wK"))

    def stop(signum, frame):
        raise Stop()

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    os.makedirs(board.flash, exist_ok=True)
    try:
        board.main()
    except Stop:
        pass
    finally:
        board.stop_child()
    return 0


if __name__ == "__main__":
    sys.exit(main())
