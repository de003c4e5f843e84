# Tasks for the mediation engine. `just` itself: `pip install rust-just`.
#
#   just run                      # the embedded default (memory broker), ports 8066-8069 and 9091
#   just run examples/kafka.toml  # a real broker: installs the broker client extras first
#   just test -k watcher          # extra arguments go to pytest
#   just lint | just check FILE | just brokers | just bench [--quick] | just soak | just fleet
#   just cleanup-soak [CLIENTS]
#
# Every recipe uses the virtual environment in .venv, created on first use and brought up to date
# only when pyproject.toml changes (see _venv).

set shell := ["bash", "-euo", "pipefail", "-c"]

# The interpreter the virtual environment is made from (3.11 or newer).
python := env("PYTHON", "python3")
venv := ".venv"
default_config := "mediation.toml"
broker_extras := "kafka,rabbitmq,mqtt,solace,jms"

# List the recipes.
default:
    @{{just_executable()}} --list --justfile {{justfile()}}

# Run the engine until Ctrl-C (SIGINT) or SIGTERM.
run CONFIG=default_config: (_venv if CONFIG == default_config { "" } else { broker_extras })
    {{venv}}/bin/mediation run --config {{quote(CONFIG)}}

# Validate a configuration and print a summary (exit 2 if invalid).
check CONFIG=default_config: (_venv "")
    {{venv}}/bin/mediation check --config {{quote(CONFIG)}}

# The test suite, with the brokers it starts itself; extra arguments go to pytest.
[positional-arguments]
test *ARGS: _system-deps (_venv "all,dev,bench")
    {{venv}}/bin/pytest -q "$@"

# ruff, mypy in strict mode, and the layer contracts (import-linter, see pyproject.toml).
lint: _system-deps (_venv "all,dev")
    {{venv}}/bin/ruff check mediation tests
    {{venv}}/bin/mypy --strict mediation
    {{venv}}/bin/lint-imports

# Benchmarks against the baselines (bench/): `just bench --quick` for a smoke run.
[positional-arguments]
bench *ARGS: _system-deps (_venv "all,dev,bench")
    {{venv}}/bin/python -m bench "$@"

# Soak: many sessions for a long time, printing memory and open files (not part of `just test`).
[positional-arguments]
soak *ARGS: (_venv "all,dev")
    {{venv}}/bin/python scripts/soak.py "$@"

# The fleet test at scale: 300 clients behind HAProxy on Kafka, RabbitMQ, MQTT 5 and AMQP 1.0 at
# once, one engine of three SIGKILLed mid-stream; prints lost, duplicated (per broker) and resume
# p50/p99 (`just fleet 600` for another client count; FLEET_EVENTS=N events per broker).
fleet CLIENTS="300": _system-deps (_venv "all,dev")
    FLEET_CLIENTS={{CLIENTS}} {{venv}}/bin/pytest -q tests/test_fleet.py

# Per-client state cleanup at scale (`just test` runs 1,000 per broker): the broker objects must
# be gone within the (shortened) ttl plus one sweep. Extra arguments go to pytest.
# CLIENTS distinct client ids per broker connect once and leave; prints the timings.
[positional-arguments]
cleanup-soak CLIENTS="10000" *ARGS: _system-deps (_venv "all,dev")
    MEDIATION_CLEANUP_CLIENTS={{CLIENTS}} {{venv}}/bin/pytest -q -s tests/test_client_state_brokers.py "${@:2}"

# Fuzz every entrypoint with random seeds (`just fuzz --seconds 3600`); `just test` runs one fixed seed.
[positional-arguments]
fuzz *ARGS: (_venv "all,dev")
    {{venv}}/bin/python scripts/fuzz.py "$@"

# Start the test brokers on loopback, for working by hand against them.
brokers: _system-deps (_venv "all,dev")
    {{venv}}/bin/python scripts/brokers.py

# Debian packages: the brokers the tests start, and what python-qpid-proton compiles with.
[private]
_system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    if [[ -x scripts/install-system-deps ]]; then
        scripts/install-system-deps
    elif [[ -f scripts/install-system-deps ]]; then
        bash scripts/install-system-deps
    fi

# Create .venv if missing and install the package (editable) with EXTRAS ("" for none, or e.g.
# "all,dev"). Idempotent and fast when nothing changed: .venv/.installed records, per extra, the
# hash of pyproject.toml it was installed for.
[private]
_venv EXTRAS:
    #!/usr/bin/env bash
    set -euo pipefail
    log() { printf 'just: %s\n' "$*" >&2; }
    venv={{quote(venv)}}
    python={{quote(python)}}
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { log "$python is older than 3.11; set PYTHON=python3.11"; exit 1; }
        log "creating $venv"
        # Debian's python3 lacks the venv module (and ensurepip) unless python3-venv is
        # installed: fall back to virtualenv, then to installing python3-venv when we may.
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            if "$python" -m pip install --user --quiet virtualenv 2>/dev/null \
                || "$python" -m pip install --user --quiet --break-system-packages virtualenv; then
                "$python" -m virtualenv --quiet "$venv"
            elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
                apt-get update -qq && apt-get install -y -qq python3-venv
                "$python" -m venv "$venv"
            else
                log "cannot create $venv: install python3-venv (or pip) and retry"; exit 1
            fi
        fi
    fi
    hash=$(sha256sum pyproject.toml | cut -c1-16)
    extras={{quote(EXTRAS)}}
    wanted=(base ${extras//,/ })
    missing=0
    for extra in "${wanted[@]}"; do
        grep -qxF "$hash $extra" "$venv/.installed" 2>/dev/null || missing=1
    done
    if (( missing )); then
        spec="."
        [[ -n "$extras" ]] && spec=".[$extras]"
        log "installing -e '$spec' into $venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e "$spec"
        # "all" stands for every broker extra, so a later `just run FILE` finds them installed.
        installed=("${wanted[@]}")
        brokers={{quote(broker_extras)}}
        [[ ",$extras," == *,all,* ]] && installed+=(${brokers//,/ })
        # Keep what was installed for this pyproject.toml, forget the rest.
        { grep "^$hash " "$venv/.installed" 2>/dev/null || true
          for extra in "${installed[@]}"; do echo "$hash $extra"; done
        } | sort -u > "$venv/.installed.new"
        mv "$venv/.installed.new" "$venv/.installed"
    fi
