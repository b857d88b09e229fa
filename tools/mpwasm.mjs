// Runs a MicroPython script on the WebAssembly port, a 32-bit build whose objects are laid out as on the ESP32,
// with a host directory copied into its file system at /fw (first on sys.path). For tools/memreport.py --wasm32.
//     node tools/mpwasm.mjs SCRIPT DIR
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";

const [script, dir] = process.argv.slice(2);
const mp = await loadMicroPython({ stdout: (line) => console.log(line), stderr: (line) => console.error(line) });

function copy(src, dst) {
  mp.FS.mkdir(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, e.name);
    if (e.isDirectory()) copy(from, dst + "/" + e.name);
    else mp.FS.writeFile(dst + "/" + e.name, fs.readFileSync(from));
  }
}

copy(dir, "/fw");
try {
  // Async: a top-level await lets the port unwind its stack, the only time its garbage collector frees anything.
  await mp.runPythonAsync("import sys\nsys.path.insert(0, '/fw')\n" + fs.readFileSync(script, "utf8"));
} catch (e) {
  console.error(String(e));
  process.exit(1);
}
