#!/usr/bin/env bash
# Create the stock image `debian:trixie-slim` on a host that cannot reach a container registry
# (docs/architecture.md, decision 9). Order: the image is already present -> done; `docker pull` works ->
# done; otherwise debootstrap a minimal trixie from the apt mirror configured on THIS machine
# and `docker import` it under the stock name, so Dockerfiles keep a plain `FROM`.
#
# The mirror is read from the host's apt sources (deb822 `URIs:` or one-line `deb` entries);
# no mirror is written here. Set PERSTACK_SANDBOX_DEBIAN_MIRROR to override it.
# The archive is verified with the debian-archive-keyring (it carries the trixie keys); only
# PERSTACK_SANDBOX_DEBOOTSTRAP_NO_GPG=1 skips verification, as a documented last resort.
set -euo pipefail

image="${1:-debian:trixie-slim}"
suite="${PERSTACK_SANDBOX_DEBIAN_SUITE:-trixie}"

log() { echo "bootstrap-debian: $*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    log "pulled $image"
    exit 0
fi

# The first Debian archive URI in the host's apt configuration (skipping the security archive,
# which has no `trixie` suite of its own).
host_mirror() {
    local uris
    uris=$(
        {
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
                awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }'
            cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }'
        } | grep -v -e '-security' -e 'security\.' || true
    )
    printf '%s\n' "$uris" | grep -m1 '/debian/\?$' || printf '%s\n' "$uris" | head -n1
}

mirror="${PERSTACK_SANDBOX_DEBIAN_MIRROR:-$(host_mirror)}"
if [[ -z "$mirror" ]]; then
    log "no Debian mirror found in /etc/apt/sources.list{,.d}; set PERSTACK_SANDBOX_DEBIAN_MIRROR"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap debian-archive-keyring >/dev/null
fi

gpg_args=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
if [[ "${PERSTACK_SANDBOX_DEBOOTSTRAP_NO_GPG:-0}" == "1" ]]; then
    log "WARNING: archive signatures are NOT verified (PERSTACK_SANDBOX_DEBOOTSTRAP_NO_GPG=1)"
    gpg_args=(--no-check-gpg)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/perstack-debootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

log "debootstrap $suite (minbase) from $mirror; this takes a few minutes"
debootstrap --variant=minbase "${gpg_args[@]}" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines:"
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# The same apt source the host uses, so `apt-get install` inside builds reaches the same mirror.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
EOF
# Slim it down the way the official -slim images do.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$root/etc/apt/apt.conf.d/01-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/*
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true

log "importing as $image"
tar --numeric-owner -C "$root" -c . |
    docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $suite" \
        - "$image" >/dev/null
log "created $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
