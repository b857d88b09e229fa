# Bench-only safety probe for tools/harness/probe_mcu.py (its flag 2): times, inside the MCU, each pilot or RCD
# input change that the virtual board's reader thread applies to the contactor-open command that follows it, and
# prints BENCHSAFE mcu_us=N in_ns=T out_ns=T (wall clock of both, to place them among the sim's board events):
# the board-time reaction the sim stamps, split into the link in, the MCU's part and the link out.
# Wraps hal.unix.Board at run time; exec'd inside probe_mcu.py's globals.
_safe = [0, None, 0]  # ticks_us of the last input change, the last (cp level, rcd) seen, its time_ns


def _install_safety():
    from hal import unix

    board = unix.Board
    apply = board._apply
    send = board.set_contactor

    def _apply(self, line):
        apply(self, line)
        cp, rcd = self._cp, self._rcd
        key = (cp[0] // 1000, rcd)
        if key != _safe[1]:
            if _safe[1] is not None:
                _safe[0] = time.ticks_us()
                _safe[2] = time.time_ns()
            _safe[1] = key

    def set_contactor(self, on):
        if not on and self._out["contactor"]:
            t = time.ticks_us()
            ns = time.time_ns()
            send(self, on)
            print("BENCHSAFE mcu_us=%d in_ns=%d out_ns=%d" % (time.ticks_diff(t, _safe[0]), _safe[2], ns))
        else:
            send(self, on)

    board._apply = _apply
    board.set_contactor = set_contactor


_install_safety()
