#!/usr/bin/env python3
"""Validates every manifest under deploy/ (CI runs this; exits non-zero on any problem).

1. Built-in kinds: kubernetes-validate, strict (unknown fields are errors), against the
   Kubernetes version given by --kubernetes-version.
2. ServiceMonitor (a Prometheus Operator CRD, not in the built-in schemas): against
   deploy/schemas/servicemonitor.json with jsonschema.
3. Every mailveil.toml embedded in a ConfigMap: `mailveil check-config`, with placeholder values
   for the secrets and certificate files it names (so a wrong key or value fails CI).
4. The Grafana dashboard parses as JSON.

Usage: python3 deploy/check.py [--mailveil target/debug/mailveil] [--kubernetes-version 1.33.0]
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json"}


def tls_placeholder(tmp):
    """A self-signed certificate and its key (PEM files in tmp) for check-config."""
    cert, key = os.path.join(tmp, "placeholder-cert.pem"), os.path.join(tmp, "placeholder-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=placeholder"], check=True, capture_output=True)
    return cert, key


def check_config(mailveil, name, text, problems):
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        for var in set(re.findall(r'_env\s*=\s*"([^"]+)"', text)):
            env[var] = "placeholder"
        # Certificate and password files: point them at existing placeholder files. check-config
        # loads TLS files as `run` does (a certificate and the key that pairs with it), so the
        # certificate, its key and CA files are a real self-signed pair made with openssl.
        pair = tls_placeholder(tmp)

        def placeholder(match):
            key = match.group(1).split("=")[0].strip()
            path = os.path.join(tmp, os.path.basename(match.group(2)))
            if key in ("cert", "ca_file"):
                shutil.copy(pair[0], path)
            elif key == "key":
                shutil.copy(pair[1], path)
            else:
                open(path, "w").close()
            return f'{match.group(1)}"{path}"'
        text = re.sub(r'((?:cert|key|ca_file|_file)\s*=\s*)"([^"]+)"', placeholder, text)
        # Directories (spool, capture): check-config wants them writable or creatable by this
        # user; a volume that exists only in the pod becomes a fresh path under tmp.
        text = re.sub(r'(^\s*dir\s*=\s*)"([^"]+)"',
                      lambda m: f'{m.group(1)}"{os.path.join(tmp, "dirs", os.path.basename(m.group(2)))}"',
                      text, flags=re.M)
        path = os.path.join(tmp, "mailveil.toml")
        with open(path, "w") as f:
            f.write(text)
        out = subprocess.run([mailveil, "check-config", "-c", path], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"{name}: mailveil check-config failed:\n{out.stderr}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailveil", help="mailveil binary for check-config (skipped if absent)")
    parser.add_argument("--kubernetes-version", default="1.33.0")
    args = parser.parse_args()
    problems = []
    checked = 0
    for path in sorted(glob.glob(os.path.join(HERE, "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, os.path.dirname(HERE))
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            name = f"{rel}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
            try:
                if crd:
                    with open(os.path.join(HERE, "schemas", crd)) as f:
                        jsonschema.validate(doc, json.load(f))
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
                problems.append(f"{name}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name}: no schema: {e}")
            checked += 1
            if doc.get("kind") == "ConfigMap" and args.mailveil:
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith(".toml"):
                        check_config(args.mailveil, f"{name} {key}", text, problems)
    for path in sorted(glob.glob(os.path.join(HERE, "**", "*.json"), recursive=True)):
        try:
            with open(path) as f:
                json.load(f)
        except ValueError as e:
            problems.append(f"{os.path.relpath(path, os.path.dirname(HERE))}: {e}")
    for p in problems:
        print(f"INVALID {p}", file=sys.stderr)
    print(f"deploy/: {checked} manifests checked, {len(problems)} problem(s)")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
