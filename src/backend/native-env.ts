/**
 * The process environment as C sees it. Bun's process.env is its own copy: assigning to it
 * does not reach getenv(), which is where the native library reads its settings
 * (GPT_LANES, GPT_RECOMPUTE, ... at gpt_create; see native/include/gpt.h). Tests and
 * benchmarks that need such a setting in-process set it here.
 */
import { dlopen, FFIType } from "bun:ffi";

const LIBC = process.platform === "darwin" ? "/usr/lib/libSystem.B.dylib" : "libc.so.6";

function libc() {
  return dlopen(LIBC, {
    setenv: { args: [FFIType.cstring, FFIType.cstring, FFIType.i32], returns: FFIType.i32 },
    unsetenv: { args: [FFIType.cstring], returns: FFIType.i32 },
  });
}

const cstr = (s: string) => Buffer.from(`${s}\0`);

/** setenv(name, value) in the C environment, or unsetenv(name) for value null. */
export function setNativeEnv(name: string, value: string | null): void {
  const lib = libc();
  try {
    const rc = value === null ? lib.symbols.unsetenv(cstr(name)) : lib.symbols.setenv(cstr(name), cstr(value), 1);
    if (rc !== 0) throw new Error(`cannot ${value === null ? "unset" : "set"} ${name} in the C environment`);
  } finally {
    lib.close();
  }
}
