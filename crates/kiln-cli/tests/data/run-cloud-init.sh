#!/bin/sh
# Runs Debian's stock cloud-init against a NoCloud seed in an isolated root: called by the
# cloud-init tests inside `unshare --mount --uts --propagation private`, so every mount
# below and the hostname cloud-init sets vanish with the process. The root is an overlay of
# the host's / with its upper layer on a tmpfs: cloud-init writes there, never to the host.
# A seed URL is read over the network (`cloud-init init`), with cloud-init's networking
# off; a seed directory (what a `cidata` medium holds) is read as a local seed before the
# network (`cloud-init init --local`), whose network configuration cloud-init renders.
# Prints the hostname, root's authorized_keys and the rendered network files.
# Usage: run-cloud-init.sh SEED_URL|SEED_DIRECTORY SCRATCH_DIR
set -eu
seed=$1
scratch=$2
mount -t tmpfs tmpfs "$scratch"
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root=$scratch/root
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
# A first boot: no earlier instance, no keys, not disabled (install-deps disables cloud-init
# on the host itself).
rm -rf "$root/var/lib/cloud" "$root/var/log/cloud-init.log" "$root/etc/cloud/cloud-init.disabled" "$root/root/.ssh"
mkdir -p "$root/etc/cloud/cloud.cfg.d"
if [ -d "$seed" ]; then
    mkdir -p "$root/var/lib/cloud/seed/nocloud"
    cp "$seed"/* "$root/var/lib/cloud/seed/nocloud/"
    rm -f "$root/etc/network/interfaces.d/50-cloud-init" "$root"/etc/systemd/network/10-cloud-init-*
    printf 'datasource_list: [ NoCloud ]\n' > "$root/etc/cloud/cloud.cfg.d/99-kiln-test.cfg"
    stage=--local
else
    cat > "$root/etc/cloud/cloud.cfg.d/99-kiln-test.cfg" <<CONFIG
datasource_list: [ NoCloud ]
datasource:
  NoCloud:
    seedfrom: $seed
network:
  config: disabled
CONFIG
    stage=
fi
hostname before-cloud-init
if ! chroot "$root" cloud-init init $stage > "$root/tmp/cloud-init.out" 2>&1; then
    cat "$root/tmp/cloud-init.out"
    tail -n 60 "$root/var/log/cloud-init.log"
    exit 1
fi
echo "hostname: $(hostname)"
echo "etc-hostname: $(cat "$root/etc/hostname")"
echo "authorized_keys:"
cat "$root/root/.ssh/authorized_keys" 2>/dev/null || true
echo "network files:"
cat "$root/etc/network/interfaces.d/50-cloud-init" "$root"/etc/systemd/network/10-cloud-init-* 2>/dev/null || true
echo "warnings:"
grep -E "WARNING|Traceback" "$root/var/log/cloud-init.log" || true
