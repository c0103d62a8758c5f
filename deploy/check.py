#!/usr/bin/env python3
"""Validates the manifests under deploy/ (CI runs this; exits non-zero on any problem).

1. Built-in kinds: kubernetes-validate, strict (unknown fields are errors), against the
   Kubernetes version given by --kubernetes-version.
2. ServiceMonitor (a Prometheus Operator CRD, not in the built-in schemas): against
   deploy/schemas/servicemonitor.json with jsonschema.
3. Every mailveil.toml embedded in a ConfigMap: `mailveil check-config`, with placeholder values
   for the secrets and certificate files it names (so a wrong key or value fails CI).
4. The Grafana dashboard parses as JSON.
5. What a schema cannot see, read across the objects (each rule says what it prevents):
   - secrets: every variable a config's `*_env` key names (except admin.token_env, which may
     be unset: the admin API stays off) is set in the container running that config, from a
     Secret key that is not `optional` (an unset variable makes `mailveil run` exit 64: a
     crash loop), never as a literal `value:` (a secret in a manifest); a Secret shipped
     under deploy/ must not hold an empty or placeholder value ("changeme", "replace-me", ...)
     nor a TLS Secret anything but PEM (the relay would crash-loop or run with a credential
     everyone knows). Ship no Secrets: document `kubectl create secret` instead.
   - cluster: `[cluster] replicas` equals the replicas of the StatefulSet/Deployment running
     that config (while Redis is down each replica paces at rate / replicas); a workload with
     more than one replica and no `[cluster]` gets a note (N replicas pace N x each limit).
   - Redis: a Redis workload runs with a password (`requirepass` from a Secret) and every
     `[cluster]` config that uses it sets `password_env`.
   - open relay: `access.networks` of a config listening beyond loopback holds no network
     wider than /16 (IPv4) or /48 (IPv6); everyone else must AUTH.
   - NetworkPolicy: a relay listening beyond loopback, and a Redis, are selected by a
     NetworkPolicy whose ingress rules all name who may connect (`from`).
   - probes: a native sidecar running mailveil (an init container with restartPolicy Always)
     has no readinessProbe: a sidecar's readiness is the app pod's, so a mailveil-only
     condition (a full spool) would take the app out of its Services.
   - ports: every Service in front of the same pods gives the `smtp` port one number, and a
     headless Service's port is the container's port (headless Services do not translate).
   - references: a file a manifest's comments point to exists (next to it, under deploy/, or
     at the repository's root).
   - memory: the container's memory limit is at least
     64 MiB + (max_connections + 4) x max_message_size (every connection in DATA holds its
     message; up to 4 more copies while the privacy check and the spool write run, one per
     core on a 2-core node), or with `[server] max_data_memory` set,
     64 MiB + max_data_memory + 4 x max_message_size. See docs/operations.md "Memory".

Usage: python3 deploy/check.py [--mailveil target/debug/mailveil] [--kubernetes-version 1.33.0]
                               [PATH ...]   (files or directories; default: deploy/)
"""
import argparse
import glob
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
PLACEHOLDER = re.compile(
    r"^\s*$|change[-_ ]?me|replace[-_ ]?(me|with)|placeholder|^x{3,}$|^todo|^secret$|^password$"
    r"|^dummy|^example|<.*>",
    re.IGNORECASE,
)
MIB = 1024 * 1024


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


def size_bytes(value, default):
    """A mailveil size (integer bytes, "25MiB", "10 MB") in bytes; None if not understood."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", str(value), re.IGNORECASE)
    if not m:
        return None
    unit = m.group(2).upper().rstrip("B")
    factor = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}.get(unit)
    return None if factor is None else int(float(m.group(1)) * factor)


def quantity_bytes(value):
    """A Kubernetes memory quantity ("384Mi", "1G", "1000") in bytes; None if not understood."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    if not m:
        return None
    factor = {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}[m.group(2)]
    return int(float(m.group(1)) * factor)


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    return ((spec.get("template") or {}).get("spec") or {})


def pod_labels(doc):
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    return (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}


def selects(selector, labels):
    """A label selector ({matchLabels, matchExpressions}, or a Service's plain map) matches
    labels. An empty selector matches every pod (as in a NetworkPolicy's podSelector)."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        ok = {"In": labels.get(key) in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}.get(op, False)
        if not ok:
            return False
    return True


def containers(spec):
    """(container, is_native_sidecar) for every container and init container of a pod spec."""
    for c in spec.get("containers") or []:
        yield c, False
    for c in spec.get("initContainers") or []:
        yield c, c.get("restartPolicy") == "Always"


def config_maps_mounted(spec, container):
    """Names of the ConfigMaps whose volumes the container mounts."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    names = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        if volume.get("configMap"):
            names.append(volume["configMap"].get("name"))
        for source in ((volume.get("projected") or {}).get("sources") or []):
            if source.get("configMap"):
                names.append(source["configMap"].get("name"))
    return names


def is_loopback_listen(listen):
    host = str(listen).rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_redis(container):
    return "redis" in str(container.get("image", "")).split("/")[-1].split(":")[0]


class Objects:
    """Every object read, with the file it came from."""

    def __init__(self):
        self.docs = []  # (rel, doc)

    def kind(self, *kinds):
        return [(rel, d) for rel, d in self.docs if d.get("kind") in kinds]

    def secret(self, name):
        for _, d in self.kind("Secret"):
            if (d.get("metadata") or {}).get("name") == name:
                return d
        return None


def secret_value(secret, key):
    """The value of key in a Secret (stringData or base64 data); None when absent."""
    import base64
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        try:
            return base64.b64decode(secret["data"][key]).decode("utf-8", "replace")
        except ValueError:
            return ""
    return None


def check_secrets(objects, problems):
    for rel, secret in objects.kind("Secret"):
        name = f"{rel}: Secret/{(secret.get('metadata') or {}).get('name')}"
        values = {**{k: None for k in (secret.get("data") or {})},
                  **{k: None for k in (secret.get("stringData") or {})}}
        for key in values:
            value = secret_value(secret, key)
            if secret.get("type") == "kubernetes.io/tls":
                if "-----BEGIN" not in (value or ""):
                    problems.append(f"{name}: {key} is not PEM (a placeholder certificate or key "
                                    "makes the relay exit at start: a crash loop)")
            elif value is None or PLACEHOLDER.search(value):
                problems.append(f"{name}: {key} holds a placeholder ({value!r}); do not ship "
                                "Secrets, document `kubectl create secret` instead")


def env_of(container):
    return {e.get("name"): e for e in container.get("env") or []}


def check_workload_config(objects, rel, doc, spec, container, native, cm_name, config, problems,
                          notes):
    name = f"{rel}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} " \
           f"container {container.get('name')} ({cm_name})"
    # Secrets named by *_env keys.
    env = env_of(container)
    has_env_from = bool(container.get("envFrom"))
    wanted = []
    def walk(table, path):
        for key, value in table.items():
            here = f"{path}.{key}" if path else key
            if isinstance(value, dict):
                walk(value, here)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        walk(item, f"{here}[{i}]")
            elif key.endswith("_env") and isinstance(value, str):
                wanted.append((here, value))
    walk(config, "")
    for key, var in wanted:
        if key == "admin.token_env" and var not in env:
            continue
        entry = env.get(var)
        if entry is None:
            if not has_env_from:
                problems.append(f"{name}: {key} names {var}, which the container does not set "
                                "(mailveil run would exit 64: a crash loop)")
            continue
        if "value" in entry:
            problems.append(f"{name}: {var} ({key}) is a literal value in the manifest; "
                            "take it from a Secret (secretKeyRef)")
            continue
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            problems.append(f"{name}: {var} ({key}) does not come from a Secret")
            continue
        if ref.get("optional"):
            problems.append(f"{name}: {var} ({key}) is optional; unset, mailveil run exits 64")
        secret = objects.secret(ref.get("name"))
        if secret is not None:
            value = secret_value(secret, ref.get("key"))
            if value is None:
                problems.append(f"{name}: {var} ({key}): Secret {ref.get('name')} has no key "
                                f"{ref.get('key')}")
            elif PLACEHOLDER.search(value):
                problems.append(f"{name}: {var} ({key}) comes from a placeholder "
                                f"({value!r}) in Secret {ref.get('name')}")

    # Replicas and [cluster].
    replicas = (doc.get("spec") or {}).get("replicas", 1)
    cluster = config.get("cluster")
    if doc.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet"):
        if cluster is not None:
            want = cluster.get("replicas", 2)
            if want != replicas:
                problems.append(f"{name}: [cluster] replicas = {want} but the "
                                f"{doc.get('kind')} runs {replicas}; while Redis is down each "
                                f"replica paces at rate / {want}, together {replicas}/{want} x "
                                "the provider limits")
        elif replicas > 1:
            notes.append(f"{name}: {replicas} replicas without [cluster]: each paces at the full "
                         f"provider limits, {replicas} x together (docs/operations.md)")

    # Redis with a password.
    if cluster is not None:
        host = re.sub(r"^redis://([^@/]*@)?", "", cluster.get("redis_url", "")).split("/")[0]
        host = host.split(":")[0]
        redis_here = any((s.get("metadata") or {}).get("name") == host
                         for _, s in objects.kind("Service"))
        if redis_here and not (cluster.get("password_env") or cluster.get("password_file")):
            problems.append(f"{name}: [cluster] uses the Redis {host} without password_env")

    # Open relay.
    server = config.get("server") or {}
    listen = server.get("listen", "127.0.0.1:2525")
    if not is_loopback_listen(listen):
        for net in (config.get("access") or {}).get("networks", ["127.0.0.0/8", "::1/128"]):
            try:
                network = ipaddress.ip_network(net, strict=False)
            except ValueError:
                continue
            widest = 16 if network.version == 4 else 48
            if network.prefixlen < widest and not network.is_loopback:
                problems.append(f"{name}: access.networks holds {net}: every pod in it may relay "
                                f"without AUTH; allow /{widest} or narrower, or use AUTH")
        labels = pod_labels(doc)
        if not any(policy_guards(p, labels) for _, p in objects.kind("NetworkPolicy")):
            problems.append(f"{name}: listens on {listen} but no NetworkPolicy with `from` rules "
                            "selects its pods")

    # Probes of a native sidecar.
    if native and container.get("readinessProbe"):
        problems.append(f"{name}: a native sidecar's readinessProbe takes the app pod out of its "
                        "Services for a mailveil-only condition (spool full); use startupProbe "
                        "and livenessProbe only")

    # Memory against size x concurrency.
    memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    limit = quantity_bytes(memory) if memory is not None else None
    size = size_bytes(server.get("max_message_size"), 25 * MIB)
    conns = server.get("max_connections", 1024)
    cap = size_bytes(server.get("max_data_memory"), None) if "max_data_memory" in server else None
    if limit is None:
        problems.append(f"{name}: no memory limit")
    elif size is not None and isinstance(conns, int):
        in_data = min(cap, conns * size) if cap is not None else conns * size
        need = 64 * MIB + in_data + 4 * size
        if limit < need:
            how = f"max_data_memory {cap // MIB} MiB" if cap is not None else \
                f"{conns} connections x max_message_size {size // MIB} MiB"
            problems.append(f"{name}: memory limit {limit // MIB} MiB < {need // MIB} MiB "
                            f"needed for {how} (64 MiB + DATA in memory + 4 x message size)")


def policy_guards(policy, labels):
    """The NetworkPolicy selects pods with these labels and every ingress rule names `from`."""
    spec = policy.get("spec") or {}
    if not selects(spec.get("podSelector") or {}, labels):
        return False
    if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
        return False
    rules = spec.get("ingress") or []
    return bool(rules) and all(r.get("from") for r in rules)


def check_secret_instructions(objects, texts, problems):
    """A Secret a workload needs and deploy/ does not ship is one the reader must create: the
    comments of the workload's file say how (`kubectl create secret generic NAME
    --from-literal=KEY=...`, or `secret tls NAME`), with every key the workload reads."""
    for rel, doc in objects.kind(*WORKLOADS):
        spec = pod_spec(doc)
        comments = "\n".join(l for l in texts.get(rel, "").splitlines()
                              if l.lstrip().startswith("#"))
        needed = {}
        for container, _ in containers(spec):
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    needed.setdefault(ref.get("name"), set()).add(ref.get("key"))
        for volume in spec.get("volumes") or []:
            if volume.get("secret"):
                needed.setdefault(volume["secret"].get("secretName"), set())
        for name, keys in needed.items():
            if objects.secret(name) is not None:
                continue
            if not re.search(rf"create secret (generic|tls) {re.escape(name)}\b", comments):
                problems.append(f"{rel}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
                                f" needs the Secret {name}, and no comment says how to create it "
                                f"(kubectl create secret ... {name})")
                continue
            for key in sorted(keys):
                if f"--from-literal={key}=" not in comments and \
                        f"--from-file={key}=" not in comments:
                    problems.append(f"{rel}: the instructions for Secret {name} do not create "
                                    f"its key {key}")


def check_redis(objects, problems):
    for rel, doc in objects.kind(*WORKLOADS):
        spec = pod_spec(doc)
        for container, _ in containers(spec):
            if not is_redis(container):
                continue
            name = f"{rel}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} " \
                   f"container {container.get('name')}"
            argv = " ".join(str(a) for a in (container.get("command") or []) +
                            (container.get("args") or []))
            if "requirepass" not in argv:
                problems.append(f"{name}: Redis without requirepass: any pod that reaches it can "
                                "change every replica's provider limits")
            for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", argv):
                ref = ((env_of(container).get(var) or {}).get("valueFrom") or {}) \
                    .get("secretKeyRef")
                if not ref:
                    problems.append(f"{name}: {var} does not come from a Secret")
            if not any(policy_guards(p, pod_labels(doc)) for _, p in objects.kind("NetworkPolicy")):
                problems.append(f"{name}: no NetworkPolicy with `from` rules selects the Redis pods")


def check_services(objects, problems):
    workloads = objects.kind(*WORKLOADS)
    smtp_ports = {}  # workload name -> {service: port}
    for rel, svc in objects.kind("Service"):
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            continue
        sname = f"{rel}: Service/{(svc.get('metadata') or {}).get('name')}"
        for wrel, doc in workloads:
            if not selects(selector, pod_labels(doc)):
                continue
            wname = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            named = {}
            for container, _ in containers(pod_spec(doc)):
                for p in container.get("ports") or []:
                    named[p.get("name")] = p.get("containerPort")
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                target = named.get(target, target)
                if spec.get("clusterIP") == "None" and target != port.get("port"):
                    problems.append(f"{sname}: headless port {port.get('name')} is "
                                    f"{port.get('port')} but {wname} listens on {target}; a "
                                    "headless Service does not translate ports")
                if port.get("name") == "smtp":
                    smtp_ports.setdefault(wname, {})[sname] = port.get("port")
    for wname, by_service in smtp_ports.items():
        if len(set(by_service.values())) > 1:
            problems.append(f"{wname}: the Services in front of it give smtp different ports: "
                            f"{by_service}")


def check_references(path, text, problems):
    """Files a manifest's comments point to (`relay/redis.yaml`, `docs/operations.md`) exist,
    next to it, under deploy/ or at the repository's root."""
    rel = os.path.relpath(path, os.path.dirname(HERE))
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            continue
        for ref in re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.(?:yaml|json|md))\b", line):
            bases = [os.path.dirname(path), HERE, os.path.dirname(HERE)]
            if not any(os.path.exists(os.path.join(b, ref)) for b in bases):
                problems.append(f"{rel}: refers to {ref}, which does not exist")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailveil", help="mailveil binary for check-config (skipped if absent)")
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("paths", nargs="*", help="files or directories (default: deploy/)")
    args = parser.parse_args()
    problems = []
    notes = []
    checked = 0
    files = []
    for path in args.paths or [HERE]:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "**", "*.yaml"), recursive=True))
            files += sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))
        else:
            files.append(path)
    objects = Objects()
    texts = {}
    for path in [f for f in files if f.endswith((".yaml", ".yml"))]:
        rel = os.path.relpath(path, os.path.dirname(HERE))
        with open(path) as f:
            text = f.read()
        check_references(path, text, problems)
        texts[rel] = text
        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as e:
            problems.append(f"{rel}: not YAML: {e}")
            continue
        for doc in docs:
            objects.docs.append((rel, doc))
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
    for path in [f for f in files if f.endswith(".json")]:
        try:
            with open(path) as f:
                json.load(f)
        except ValueError as e:
            problems.append(f"{os.path.relpath(path, os.path.dirname(HERE))}: {e}")

    # Rules across objects.
    check_secrets(objects, problems)
    configs = {}
    for rel, cm in objects.kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".toml"):
                try:
                    configs[(cm.get("metadata") or {}).get("name")] = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    problems.append(f"{rel}: ConfigMap {key}: {e}")
    for rel, doc in objects.kind(*WORKLOADS):
        spec = pod_spec(doc)
        for container, native in containers(spec):
            for cm in config_maps_mounted(spec, container):
                if cm in configs:
                    check_workload_config(objects, rel, doc, spec, container, native, cm,
                                          configs[cm], problems, notes)
    check_redis(objects, problems)
    check_services(objects, problems)
    check_secret_instructions(objects, texts, problems)

    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"INVALID {p}", file=sys.stderr)
    print(f"deploy/: {checked} manifests checked, {len(problems)} problem(s)")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
