#!/usr/bin/env bash
# Lays out the photo sets A and B of README "Recipes on photographs" from the
# Debian packages they come from, and builds benchA / benchB from them:
#
#   bash bench/photo_sets.sh OUTDIR
#
# writes OUTDIR/A (23 photographs), OUTDIR/B (24) and, with the release
# binary, OUTDIR/benchA (`synth --images A`, seed 0) and OUTDIR/benchB
# (seed 1). Needs apt-get (Debian bookworm or later) and `cargo build
# --release`. The photographs are freely licensed but not shipped here: read
# each package's copyright file (OUTDIR/debs/x/usr/share/doc/*/copyright)
# before redistributing them.
set -euo pipefail
out=${1:?usage: bash bench/photo_sets.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/nhpatch"
[ -x "$bin" ] || { echo "photo_sets.sh: $bin missing: run cargo build --release first" >&2; exit 1; }

mkdir -p "$out/debs" "$out/A" "$out/B"
out=$(cd "$out" && pwd)
cd "$out/debs"
# apt-get download writes into the current directory; the packages are
# architecture-independent.
apt-get download mate-backgrounds lxqt-themes plasma-workspace-wallpapers lomiri-wallpapers-16.04
for deb in *.deb; do dpkg-deb -x "$deb" x; done
share="$out/debs/x/usr/share"

# A: mate-backgrounds' 12 nature photographs and 11 of lxqt-themes'
# wallpapers (the photographs; the origami, logo and pattern ones left out).
cp "$share"/backgrounds/mate/nature/*.jpg "$out/A/"
for name in after-the-rain.jpg fog.jpg Butterfly-Kenneth-Wimer.jpg this-is-not-windows.jpg \
    appleflower.png flowers.png butterfly.png drop.png beam.png cloud.png Valendas.png; do
    cp "$share/lxqt/wallpapers/$name" "$out/A/"
done

# B: 11 of plasma-workspace-wallpapers' 2560x1600 photographs (Autumn left
# out) under their wallpaper's name, and 13 of lomiri-wallpapers-16.04's
# (analogpattern and umang left out).
for name in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite \
    OneStandsOut Path summer_1am; do
    cp "$share/wallpapers/$name/contents/images/2560x1600.jpg" "$out/B/$name.jpg"
done
for f in "$share"/backgrounds/*_by_*.jpg; do
    case "$(basename "$f")" in
        analogpattern_* | umang_*) ;;
        *) cp "$f" "$out/B/" ;;
    esac
done

na=$(ls "$out/A" | wc -l)
nb=$(ls "$out/B" | wc -l)
[ "$na" = 23 ] && [ "$nb" = 24 ] || { echo "photo_sets.sh: expected 23 and 24 photographs, found $na and $nb (package versions differ?)" >&2; exit 1; }

"$bin" synth --images "$out/A" --out "$out/benchA"
"$bin" synth --images "$out/B" --out "$out/benchB" --seed 1
