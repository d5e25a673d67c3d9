#!/usr/bin/env bash
# check-mps.sh SDK_ROOT ACCELERATE_FRAMEWORK_DIR
#
# Cross-checks the macOS build of libgpt without a Mac: compiles native/ for
# arm64-apple-macos12 against a macOS SDK (Objective-C with ARC for native/mps, C for
# the rest, -Wall -Wextra -Werror), checks every Metal / MPS / MPSGraph selector,
# property and function the Objective-C uses against the SDK header that declares it
# and its availability (<= macOS 12.0), links a dylib with ld64.lld against the SDK's
# .tbd stubs, and checks that it is a Mach-O arm64 dylib for macOS 12 exporting every
# gpt_* function of native/include/gpt.h. Exits nonzero on any warning or error.
#
#   SDK_ROOT                  a MacOSX SDK (has System/Library/Frameworks/Metal*.framework)
#   ACCELERATE_FRAMEWORK_DIR  an Accelerate.framework (headers + .tbd); the SDK may lack one
#
# Tools: clang, ld64.lld (lld), llvm-nm, llvm-objdump, file, python3. Set CLANG to
# use another clang. Output (objects, dylib, selector table) goes to CHECK_MPS_OUT or a
# fresh folder under $TMPDIR; nothing is written into the repository.
set -u -o pipefail

die() { echo "check-mps: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: scripts/check-mps.sh SDK_ROOT ACCELERATE_FRAMEWORK_DIR"
[ -d "$1" ] || die "SDK_ROOT $1 is not a folder"
[ -d "$2" ] || die "ACCELERATE_FRAMEWORK_DIR $2 is not a folder"
SDK=$(cd "$1" && pwd)
ACC=$(cd "$2" && pwd)
FW="$SDK/System/Library/Frameworks"
for f in Metal MetalPerformanceShaders MetalPerformanceShadersGraph Foundation CoreFoundation CoreGraphics; do
    [ -d "$FW/$f.framework" ] || die "SDK_ROOT $SDK has no System/Library/Frameworks/$f.framework (expected a MacOSX SDK)"
done
[ -f "$SDK/usr/lib/libSystem.tbd" ] || die "SDK_ROOT $SDK has no usr/lib/libSystem.tbd (expected a MacOSX SDK)"
[ "$(basename "$ACC")" = "Accelerate.framework" ] || die "ACCELERATE_FRAMEWORK_DIR $ACC must be an Accelerate.framework folder"
[ -f "$ACC/Headers/Accelerate.h" ] && [ -f "$ACC/Accelerate.tbd" ] ||
    die "ACCELERATE_FRAMEWORK_DIR $ACC needs Headers/Accelerate.h and Accelerate.tbd"

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${CHECK_MPS_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/check-mps.XXXXXX")}
mkdir -p "$OUT/obj" || die "cannot create $OUT"
TARGET=arm64-apple-macos12
CLANG=${CLANG:-clang}

command -v "$CLANG" >/dev/null || die "$CLANG not found (apt-get install clang)"
for t in llvm-nm llvm-objdump file python3; do command -v "$t" >/dev/null || die "$t not found"; done
# clang -fuse-ld=lld runs the ld64.lld it finds first on its program path (-B): a symlink
# of that name in $OUT/bin pins the one found here (a versioned ld64.lld-NN is fine).
LD64=$(command -v ld64.lld || true)
if [ -z "$LD64" ]; then
    for c in /usr/bin/ld64.lld-* /usr/lib/llvm-*/bin/ld64.lld; do [ -x "$c" ] && LD64=$c; done
fi
[ -n "$LD64" ] || die "ld64.lld not found (apt-get install lld)"
mkdir -p "$OUT/bin" && ln -sf "$LD64" "$OUT/bin/ld64.lld" || die "cannot create $OUT/bin/ld64.lld"

FAILS=0
SUMMARY=()
pass() { SUMMARY+=("PASS  $*"); echo "  ok    $*"; }
fail() { SUMMARY+=("FAIL  $*"); echo "  FAIL  $*"; FAILS=$((FAILS + 1)); }

echo "== toolchain"
echo "  clang:   $("$CLANG" --version | head -1)"
echo "  ld64:    $LD64 ($("$LD64" --version 2>&1 | head -1))"
echo "  SDK:     $SDK ($(sed -n 's/.*"DisplayName":"\([^"]*\)".*/\1/p' "$SDK/SDKSettings.json" 2>/dev/null))"
echo "  Accel.:  $ACC"
echo "  target:  $TARGET"
echo "  output:  $OUT"

# The flags of scripts/build-native.ts on macOS (without its -Wno-deprecated-declarations);
# -iframework: the Accelerate framework's parent folder, searched as a system framework folder.
COMMON=(--target=$TARGET -isysroot "$SDK" -iframework "$(dirname "$ACC")" -O3 -fPIC -Wall -Wextra -Werror
    -fvisibility=hidden -fno-math-errno -ffp-contract=fast -pthread -DGPT_HAVE_MPS)
OBJC=(-x objective-c -fobjc-arc -fobjc-arc-exceptions)
CFLAGS=(-x c -std=c11)

shopt -s nullglob
OBJC_SRC=("$REPO"/native/mps/*.m)
C_SRC=("$REPO"/native/*.c "$REPO"/native/cpu/*.c "$REPO"/native/mps/*.c)
[ ${#OBJC_SRC[@]} -gt 0 ] || die "no Objective-C sources in $REPO/native/mps"

compile() { # lang-flags-name source
    local src=$1 rel=${1#"$REPO"/} obj log
    shift
    obj="$OUT/obj/$(echo "$rel" | tr '/' '_').o"
    log="$OUT/obj/$(echo "$rel" | tr '/' '_').log"
    if "$CLANG" "${COMMON[@]}" "$@" -c "$src" -o "$obj" >"$log" 2>&1 && [ ! -s "$log" ]; then
        pass "compile $rel"
        OBJS+=("$obj")
    else
        fail "compile $rel"
        sed 's/^/        /' "$log"
    fi
}

echo "== compile for $TARGET (-Wall -Wextra -Werror)"
OBJS=()
for s in "${OBJC_SRC[@]}"; do compile "$s" "${OBJC[@]}"; done
for s in "${C_SRC[@]}"; do compile "$s" "${CFLAGS[@]}"; done
# the C programs built next to the library (gradcheck test, GEMM bound of the bench):
# compiled for macOS too, not linked into the dylib
LIB_OBJS=("${OBJS[@]}")
for s in "$REPO"/tests/native/*.c "$REPO"/bench/*.c; do compile "$s" "${CFLAGS[@]}" -I"$REPO/native/cpu"; done
OBJS=("${LIB_OBJS[@]}")

# The availability attributes must be live, or a clean build at macOS 12 proves nothing:
# at a deployment target older than MPSGraph itself (macOS 11) clang has to complain.
echo "== availability attributes are enforced"
AV_LOG="$OUT/availability-10.15.log"
"$CLANG" --target=arm64-apple-macos10.15 -isysroot "$SDK" "${OBJC[@]}" -Wunguarded-availability \
    -fsyntax-only "$REPO/native/mps/mps_graph.m" >"$AV_LOG" 2>&1
n_av=$(grep -c "is only available on macOS 11.0 or newer" "$AV_LOG" || true)
if [ "$n_av" -gt 0 ]; then
    pass "at macOS 10.15 clang reports $n_av uses of macOS 11.0 API (so the macOS 12 build is checked)"
else
    fail "clang reported no availability warning at macOS 10.15; availability is not being checked"
fi

echo "== selectors, properties and functions against the SDK headers"
if python3 - "$SDK" "$TARGET" "$OUT/selectors.md" "$CLANG" "$REPO" "${OBJC_SRC[@]}" <<'PY'
import os, re, subprocess, sys

sdk, target, out_md, clang, repo = sys.argv[1:6]
sources = sys.argv[6:]
FW = os.path.join(sdk, "System/Library/Frameworks")
FRAMEWORKS = ["Metal", "MetalPerformanceShaders", "MetalPerformanceShadersGraph"]
MIN = (12, 0)
MACRO = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b")  # API_AVAILABLE, MPS_SWIFT_NAME, NS_RETURNS_RETAINED...
MACOS = re.compile(r"macos\(\s*([\d.]+)\s*\)")
UNAVAILABLE = re.compile(r"API_UNAVAILABLE\([^)]*\bmacos\b")

def strip_comments(s):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", s, flags=re.S))

def drop_macros(s):
    """Removes MACRO and MACRO(...) (balanced parentheses)."""
    out, i = [], 0
    for m in MACRO.finditer(s):
        if m.start() < i:
            continue
        out.append(s[i:m.start()])
        j = m.end()
        k = j
        while k < len(s) and s[k] in " \t\n":
            k += 1
        if k < len(s) and s[k] == "(":
            depth = 0
            while k < len(s):
                depth += {"(": 1, ")": -1}.get(s[k], 0)
                k += 1
                if depth == 0:
                    break
            j = k
        i = j
    out.append(s[i:])
    return "".join(out)

def version(text):
    m = MACOS.search(text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None

def skip_parens(s, i):
    depth = 0
    while i < len(s):
        depth += {"(": 1, ")": -1}.get(s[i], 0)
        i += 1
        if depth == 0:
            return i
    return i

def selector_of(decl):
    body = drop_macros(decl).strip()[1:].lstrip()  # after - or +
    if body.startswith("("):
        body = body[skip_parens(body, 0):]
    if ":" in body:
        return "".join(p + ":" for p in re.findall(r"(\w+)\s*:", body))
    m = re.match(r"\s*(\w+)", body)
    return m.group(1) if m else None

# ---- index the headers: containers (interfaces, categories, protocols) ----
containers = {}   # name -> list of dicts(parents, methods, props, header)
functions = {}    # C function name -> (availability, header, unavailable)
CONTAINER = re.compile(r"@(interface|protocol)\s+(\w+)\s*(\(\s*\w*\s*\))?\s*(?::\s*(\w+))?\s*(?:<([^>]*)>)?")
def headers():
    for fw in FRAMEWORKS:
        for dirpath, _, files in os.walk(os.path.join(FW, fw + ".framework")):
            for fn in sorted(files):
                if fn.endswith(".h"):
                    path = os.path.join(dirpath, fn)
                    yield path, os.path.relpath(path, FW).replace("/Versions/A/", "/")
    # NSObject (alloc, init...): resolved so that it is known not to be Metal's
    yield os.path.join(sdk, "usr/include/objc/NSObject.h"), "usr/include/objc/NSObject.h"

for path, rel in headers():
    text = strip_comments(open(path, encoding="utf-8", errors="replace").read())
    for m in CONTAINER.finditer(text):
        rest = text[m.end():m.end() + 2].lstrip()
        if rest.startswith(";") or rest.startswith(","):
            continue  # forward declaration
        end = text.find("@end", m.end())
        block = text[m.end():end if end >= 0 else len(text)]
        cut = max(text.rfind(";", 0, m.start()), text.rfind("@end", 0, m.start()), text.rfind("}", 0, m.start()))
        line_end = text.find("\n", m.end())
        head = text[cut + 1:m.start()] + text[m.start():line_end]
        parents = ([m.group(4)] if m.group(4) else []) + [p.strip() for p in (m.group(5) or "").split(",") if p.strip()]
        c = {"parents": parents, "methods": {}, "props": {}, "header": rel,
             "avail": version(head), "kind": m.group(1)}
        for d in re.finditer(r"(?m)^\s*[-+]\s*\(", block):
            decl = block[d.start():block.find(";", d.start())]
            sel = selector_of(decl)
            if sel:
                c["methods"][sel] = (version(decl), bool(UNAVAILABLE.search(decl)))
        for p in re.finditer(r"@property\s*(?:\([^)]*\))?([^;]*);", block):
            names = re.findall(r"(\w+)", drop_macros(p.group(1)))
            if names:
                c["props"][names[-1]] = (version(p.group(0)), bool(UNAVAILABLE.search(p.group(0))))
                getter = re.search(r"getter\s*=\s*(\w+)", p.group(0))
                if getter:
                    c["props"][getter.group(1)] = c["props"][names[-1]]
        containers.setdefault(m.group(2), []).append(c)
    for f in re.finditer(r"\b((?:MTL|MPS)\w+)\s*\(([^;{]*)\)[^;{]*;", text):
        start = max(text.rfind(";", 0, f.start()), text.rfind("}", 0, f.start()), text.rfind("#", 0, f.start()))
        decl = text[start + 1:f.end()]
        if re.search(r"\b(?:typedef|define)\b", decl) or "(" in decl[:decl.find(f.group(1))]:
            continue
        functions.setdefault(f.group(1), (version(decl), rel, bool(UNAVAILABLE.search(decl))))

def resolve(name, member, kind, seen=None):
    """(availability, unavailable, header, container) of member in name or its parents."""
    seen = seen or set()
    if name in seen:
        return None
    seen.add(name)
    for c in containers.get(name, []):
        # a property getter may be declared as a method, and a property read as a message
        for decl_kind, table in (("method", c["methods"]), ("property", c["props"])):
            if member in table:
                avail, unavail = table[member]
                return (avail or c["avail"], unavail, c["header"], name, decl_kind)
    for c in containers.get(name, []):
        for p in c["parents"]:
            r = resolve(p, member, kind, seen)
            if r:
                return r
    return None

# ---- what our sources use: clang's AST ----
QUOTED = re.compile(r"'([^']*)'")
def receiver_type(line):
    m = QUOTED.search(line)
    if not m:
        return None
    t = re.sub(r"\b(__strong|__weak|__autoreleasing|__unsafe_unretained|_Nullable|_Nonnull|const|__kindof)\b", "", m.group(1)).strip()
    p = re.match(r"id\s*<\s*(\w+)", t)
    if p:
        return p.group(1)
    c = re.match(r"(\w+)", t)
    return c.group(1) if c else None

uses = {}  # (kind, receiver, member) -> source file
own = set()
for src in sources:
    ast = subprocess.run([clang, "--target=" + target, "-isysroot", sdk, "-x", "objective-c", "-fobjc-arc",
                          "-fsyntax-only", "-Xclang", "-ast-dump", src], capture_output=True, text=True)
    if ast.returncode != 0:
        print("  clang -ast-dump failed for " + src + ":\n" + ast.stderr)
        sys.exit(1)
    lines = ast.stdout.splitlines()
    current = ""
    ours = os.path.basename(src)
    for i, line in enumerate(lines):
        for loc in re.finditer(r"[<, ]([^<>,\s]+\.(?:h|m|c)):\d+:\d+", line):
            current = os.path.basename(loc.group(1))
        m = re.search(r"ObjCInterfaceDecl 0x\w+ <[^>]*(?:mps_graph|gpt_mps)[^>]*> .*? (\w+)$", line)
        if m:
            own.add(m.group(1))
        if not current.startswith(("mps_", "gpt_mps")) and current != ours:
            continue
        m = re.search(r"ObjCMessageExpr .* selector=(\S+)(?: class='(\w+)')?", line)
        if m:
            recv = m.group(2) or (receiver_type(lines[i + 1]) if i + 1 < len(lines) and "super" not in line else None)
            if recv:
                uses.setdefault(("method", recv, m.group(1)), ours)
            continue
        m = re.search(r"ObjCPropertyRefExpr .* (?:Property|Getter)=\"(\w+)\"", line)
        if m and i + 1 < len(lines):
            recv = receiver_type(lines[i + 1])
            if recv:
                uses.setdefault(("property", recv, m.group(1)), ours)
            continue
        m = re.search(r"DeclRefExpr .* Function 0x\w+ '((?:MTL|MPS)\w+)'", line)
        if m:
            uses.setdefault(("function", "", m.group(1)), ours)

rows, problems, foundation = [], [], set()
for (kind, recv, member), src in sorted(uses.items(), key=lambda u: (u[0][1], u[0][2])):
    if kind == "function":
        f = functions.get(member)
        if not f:
            problems.append(f"function {member}: no declaration found in {', '.join(FRAMEWORKS)} headers")
            continue
        avail, header, unavail = f
        rows.append((member + "()", "function", header, avail, unavail))
        continue
    if recv in own or recv in ("MPSGPTGraph", "MPSGPTDecodeGraph", "GPTMPSModel"):
        continue
    r = resolve(recv, member, kind)
    if r is None:
        if recv.startswith(("MTL", "MPS")):
            problems.append(f"{kind} {member} of {recv}: not declared in the SDK headers")
        else:
            foundation.add(f"{recv} {member}")
        continue
    avail, unavail, header, container, decl_kind = r
    if not container.startswith(("MTL", "MPS")):
        foundation.add(f"{recv} {member}")
        continue
    label = ("[" + container + " " + member + "]") if decl_kind == "method" else (container + "." + member)
    if all(row[0] != label for row in rows):
        rows.append((label, decl_kind, header, avail, unavail))

for label, kind, header, avail, unavail in rows:
    if unavail:
        problems.append(f"{label}: marked unavailable on macOS in {header}")
    elif avail is None:
        problems.append(f"{label}: no macOS availability found in {header}")
    elif avail > MIN:
        problems.append(f"{label}: needs macOS {'.'.join(map(str, avail))} ({header}), the target is 12.0")

with open(out_md, "w") as f:
    f.write("| selector / symbol | kind | header | macOS |\n|---|---|---|---|\n")
    for label, kind, header, avail, unavail in rows:
        v = "unavailable" if unavail else ".".join(map(str, avail)) if avail else "?"
        f.write(f"| `{label}` | {kind} | {header} | {v} |\n")
print(open(out_md).read(), end="")
print(f"  {len(rows)} Metal/MPS/MPSGraph uses checked; {len(foundation)} Foundation/runtime uses not tabulated")
for p in problems:
    print("  problem: " + p)
sys.exit(1 if problems or not rows else 0)
PY
then
    pass "every Metal/MPS/MPSGraph selector, property and function is declared in the SDK and available on macOS <= 12.0"
else
    fail "selector check (see above)"
fi

echo "== link a macOS arm64 dylib with ld64.lld"
# The Accelerate stubs may come from an iOS SDK (the macOS SDK snapshot has none): a copy
# of them, re-tagged for macOS and given the macOS install name, serves the link only.
STUBS="$OUT/accelerate-stubs"
rm -rf "$STUBS"
mkdir -p "$STUBS/System/Library/Frameworks"
cp -R "$ACC" "$STUBS/System/Library/Frameworks/"
ACC_STUB="$STUBS/System/Library/Frameworks/Accelerate.framework"
find "$ACC_STUB" -name '*.tbd' -exec sed -i.orig -E 's/\b(armv7|armv7s|arm64|arm64e)-ios\b/\1-macos/g' {} +
sed -i.orig "s#^install-name: *'/System/Library/Frameworks/Accelerate.framework/Accelerate'#install-name: '/System/Library/Frameworks/Accelerate.framework/Versions/A/Accelerate'#" "$ACC_STUB/Accelerate.tbd"
DYLIB="$OUT/libgpt.dylib"
LINK_LOG="$OUT/link.log"
FRAMEWORKS=(-framework Foundation -framework CoreFoundation -framework CoreGraphics -framework Metal
    -framework MetalPerformanceShaders -framework MetalPerformanceShadersGraph -framework Accelerate)
if [ ${#OBJS[@]} -eq $((${#OBJC_SRC[@]} + ${#C_SRC[@]})) ] &&
    "$CLANG" --target=$TARGET -isysroot "$SDK" -fuse-ld=lld -B "$OUT/bin" -shared \
        -install_name @rpath/libgpt.dylib -o "$DYLIB" "${OBJS[@]}" \
        -Wl,-syslibroot,"$STUBS" -F "$STUBS/System/Library/Frameworks" "${FRAMEWORKS[@]}" -lobjc \
        >"$LINK_LOG" 2>&1 && [ ! -s "$LINK_LOG" ]; then
    pass "link $DYLIB ($(wc -c <"$DYLIB") bytes)"
else
    fail "link (skipped when a compile failed)"
    sed 's/^/        /' "$LINK_LOG" 2>/dev/null
fi

echo "== the dylib"
if [ -f "$DYLIB" ]; then
    desc=$(file -b "$DYLIB")
    echo "  file: $desc"
    case "$desc" in
    *"Mach-O 64-bit"*arm64*"dynamically linked shared library"*) pass "Mach-O 64-bit arm64 dynamically linked shared library" ;;
    *) fail "not a Mach-O arm64 dylib: $desc" ;;
    esac
    bv=$(llvm-objdump --macho --private-headers "$DYLIB" | grep -A4 LC_BUILD_VERSION | tr -s ' ' | tr '\n' ' ')
    if echo "$bv" | grep -Eq "platform (macos|1) " && echo "$bv" | grep -q "minos 12.0"; then
        pass "LC_BUILD_VERSION platform macos, minos 12.0"
    else
        fail "unexpected LC_BUILD_VERSION: $bv"
    fi
    id=$(llvm-objdump --macho --dylib-id "$DYLIB" | tail -n +2 | tr -d '[:space:]')
    [ "$id" = "@rpath/libgpt.dylib" ] && pass "install name $id" || fail "install name '$id', expected @rpath/libgpt.dylib"
    echo "  linked against:"
    llvm-objdump --macho --dylibs-used "$DYLIB" | tail -n +2 | grep -v "^[[:space:]]*@rpath/libgpt.dylib " |
        sed 's/^[[:space:]]*/    /'
    # every function declared in gpt.h, exported as a defined global (_name)
    mapfile -t ABI < <(grep -oE '\bgpt_[a-z_]+[[:space:]]*\(' "$REPO/native/include/gpt.h" | tr -d '( \t' | sort -u)
    mapfile -t EXPORTED < <(llvm-nm -gU "$DYLIB" | awk '$2 == "T" { print $3 }' | sort -u)
    missing=()
    for s in "${ABI[@]}"; do
        printf '%s\n' "${EXPORTED[@]}" | grep -qx "_$s" || missing+=("$s")
    done
    if [ ${#ABI[@]} -gt 0 ] && [ ${#missing[@]} -eq 0 ]; then
        pass "exports all ${#ABI[@]} functions of gpt.h: ${ABI[*]}"
    else
        fail "gpt.h functions not exported: ${missing[*]:-(none found in gpt.h)}"
    fi
    n_undef=$(llvm-nm -u "$DYLIB" | wc -l)
    echo "  imports $n_undef symbols from the system libraries above"
else
    fail "no dylib to inspect"
fi

echo "== summary"
printf '  %s\n' "${SUMMARY[@]}"
if [ "$FAILS" -eq 0 ]; then
    echo "check-mps: PASS (0 warnings, 0 errors; output in $OUT)"
    exit 0
fi
echo "check-mps: FAIL ($FAILS failed checks; output in $OUT)"
exit 1
