#!/bin/sh
# Written by `kiln image build` into the disk images it makes. SYSLINUX boots the kernel and
# initramfs on the EFI system partition (label ESP, on the disk holding /); this keeps them
# the newest ones in /boot after a kernel or an initramfs is installed. The kernel's hooks
# (/etc/kernel/postinst.d) and initramfs-tools' (/etc/initramfs/post-update.d) run it; its
# arguments are not needed.
set -eu
newest=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
[ -n "$newest" ] || exit 0
initrd=
for name in "initrd.img-$newest" "initramfs-$newest.img" "initrd-$newest"; do
    [ -f "/boot/$name" ] && initrd=/boot/$name && break
done
# The kernel's own hook may run before its initramfs exists; the initramfs's hook runs after.
[ -n "$initrd" ] || exit 0
root=$(findmnt -n -o SOURCE /) || exit 0
parent=$(lsblk -n -d -o PKNAME "$root" 2>/dev/null) || exit 0
[ -n "$parent" ] || exit 0
esp=
for partition in $(lsblk -n -l -o PATH "/dev/$parent"); do
    if [ "$(blkid -o value -s LABEL "$partition" 2>/dev/null || true)" = ESP ]; then
        esp=$partition
        break
    fi
done
# Not booted from a Kiln disk image (a live root, another layout): nothing to keep.
[ -n "$esp" ] || exit 0
target=$(mktemp -d)
trap 'umount "$target" 2>/dev/null || true; rmdir "$target"' EXIT
mount -t vfat "$esp" "$target"
# Copied beside, then renamed: a copy that fails (a full partition) leaves the previous pair.
cp "/boot/vmlinuz-$newest" "$target/vmlinuz.new"
cp "$initrd" "$target/initrd.img.new"
mv "$target/vmlinuz.new" "$target/vmlinuz"
mv "$target/initrd.img.new" "$target/initrd.img"
echo "kiln: the EFI system partition ($esp) now boots $newest"
