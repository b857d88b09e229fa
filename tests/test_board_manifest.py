"""The custom build's board definition (boards/EVSE_ESP32, docs/custom-build.md) checked without building it:
the frozen modules are exactly the ones the firmware imports on an ESP32, and the partition table has two OTA app
slots that fit the flash."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD = os.path.join(ROOT, "boards", "EVSE_ESP32")
FLASH_SIZE = 4 * 1024 * 1024
ENTRY_POINTS = ("boot.py", "main.py")  # on the file system, not frozen: they import the frozen code


def module_file(name):
    base = os.path.join(ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(path):
            return path
    return None


def _platform_test(test):
    """True/False when an if-test compares sys.platform with a string (as evaluated on an ESP32), else None."""
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Attribute)
            and test.left.attr == "platform" and isinstance(test.left.value, ast.Name)
            and test.left.value.id == "sys" and isinstance(test.comparators[0], ast.Constant)):
        same = test.comparators[0].value == "esp32"
        if isinstance(test.ops[0], ast.Eq):
            return same
        if isinstance(test.ops[0], ast.NotEq):
            return not same
    return None


def imports_on_esp32(path):
    """Every module name an ESP32 can import from this file: module level and inside functions alike (lazy
    imports are frozen too), skipping the branches of `if sys.platform ...` that an ESP32 does not take."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If):
                taken = _platform_test(node.test)
                if taken is None:
                    visit([node.test])
                    visit(node.body)
                    visit(node.orelse)
                else:
                    visit(node.body if taken else node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append(node.module)
                found.extend("%s.%s" % (node.module, a.name) for a in node.names)
            visit(ast.iter_child_nodes(node))

    with open(path) as f:
        visit(ast.parse(f.read(), path).body)
    return found


def firmware_modules():
    """The project modules reachable from boot.py and main.py on an ESP32: {dotted name: file}."""
    seen = {}

    def reach(name):
        path = module_file(name)
        if name in seen or path is None:
            return  # MicroPython's own modules (sys, asyncio, machine, esp32...) are the port's business
        seen[name] = path
        parts = name.split(".")
        for i in range(1, len(parts)):  # a package's __init__ loads before its modules
            reach(".".join(parts[:i]))
        for dep in imports_on_esp32(path):
            reach(dep)

    for entry in ENTRY_POINTS:
        for dep in imports_on_esp32(os.path.join(ROOT, entry)):
            reach(dep)
    return seen


def manifest_files():
    """The repository files the board's manifest.py freezes, run with stand-ins for MicroPython's manifest
    functions: {path relative to the repository: opt}."""
    repo = os.path.abspath(os.path.join(BOARD, "..", ".."))
    frozen, included = {}, []

    def resolve(base):
        return os.path.abspath(base.replace("$(BOARD_DIR)", BOARD))

    def add(path, base, opt):
        full = os.path.join(resolve(base), path)
        assert os.path.exists(full), "manifest.py names %s, which does not exist" % full
        frozen[os.path.relpath(full, repo)] = opt

    def module(path, base_path=".", opt=None):
        add(path, base_path, opt)

    def package(path, files=None, base_path=".", opt=None):
        assert files is not None, "package(%r) without files= freezes whatever lies there; list the modules" % path
        for f in files:
            add(os.path.join(path, f), base_path, opt)

    def include(path, **kwargs):
        included.append(path)

    with open(os.path.join(BOARD, "manifest.py")) as f:
        exec(f.read(), {"module": module, "package": package, "include": include})
    return frozen, included


def installed_files():
    """The PyPI packages the firmware uses (tools/build.py INSTALLED: microdot), as the manifest must name them:
    real paths in the venv's site-packages."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import build
    return {os.path.realpath(src) for _, src in build.installed_sources()}


def test_manifest_freezes_exactly_what_the_firmware_imports_on_an_esp32():
    wanted = {os.path.relpath(p, ROOT) for p in firmware_modules().values()}
    frozen, included = manifest_files()
    installed = installed_files()
    from_venv = {p for p in frozen if os.path.realpath(os.path.join(ROOT, p)) in installed}
    assert {os.path.realpath(os.path.join(ROOT, p)) for p in from_venv} == installed, (
        "boards/EVSE_ESP32/manifest.py must freeze microdot's modules from the venv: %s" % sorted(installed))
    frozen = {p: o for p, o in frozen.items() if p not in from_venv}
    missing, extra = sorted(wanted - set(frozen)), sorted(set(frozen) - wanted)
    assert not missing and not extra, (
        "boards/EVSE_ESP32/manifest.py is out of step with the firmware's imports: add %s; remove %s"
        % (missing or "nothing", extra or "nothing"))
    # sanity of the walk itself: the ESP32 board and the application are in, the virtual board is not
    assert {"hal/esp32.py", "firmware/app.py", "slotboot.py", "lib/ws.py"} <= wanted
    assert "hal/unix.py" not in wanted and "hal/unix_uart.py" not in wanted
    assert not any(p.startswith(ENTRY_POINTS) for p in frozen)
    assert set(frozen.values()) == {3}  # -O3, as tools/build.py compiles the .mpy files
    assert included == ["$(PORT_DIR)/boards/manifest.py"]  # the port's own frozen modules (_boot.py, asyncio)


def test_walk_follows_lazy_imports_and_the_esp32_branch_only(tmp_path):
    # the rules the manifest test relies on, on a file written for the purpose
    src = tmp_path / "m.py"
    src.write_text("import sys\nif sys.platform == 'esp32':\n    import a\nelse:\n    import b\n"
                   "if sys.platform != 'esp32':\n    import c\n"
                   "def f():\n    from d.e import g\n")
    assert imports_on_esp32(str(src)) == ["sys", "a", "d.e", "d.e.g"]


def partitions():
    rows = []
    with open(os.path.join(BOARD, "partitions-evse-4MiB.csv")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, ptype, sub, offset, size = [c.strip() for c in line.split(",")[:5]]
                rows.append((name, ptype, sub, int(offset, 0), int(size, 0)))
    return rows


def test_partition_table_has_two_ota_app_slots_that_fit_the_flash():
    rows = partitions()
    apps = [r for r in rows if r[1] == "app"]
    assert [r[2] for r in apps] == ["ota_0", "ota_1"] and apps[0][4] == apps[1][4]
    assert all(r[3] % 0x10000 == 0 for r in apps)  # app partitions start on 64 KB boundaries
    assert any(r[2] == "ota" for r in rows)  # otadata: which slot boots
    assert any(r[0] == "vfs" for r in rows)  # MicroPython mounts its file system from the "vfs" partition
    end = 0x9000  # after the bootloader and the partition table
    for name, ptype, sub, offset, size in sorted(rows, key=lambda r: r[3]):
        assert offset >= end and offset % 0x1000 == 0, name
        end = offset + size
    assert end <= FLASH_SIZE


def test_board_cmake_points_at_files_that_exist():
    with open(os.path.join(BOARD, "mpconfigboard.cmake")) as f:
        cmake = f.read()
    for name in re.findall(r"\$\{MICROPY_BOARD_DIR\}/([\w.\-]+)", cmake):
        assert os.path.exists(os.path.join(BOARD, name)), name
    assert "manifest.py" in cmake and "partitions-evse-4MiB.csv" in cmake
