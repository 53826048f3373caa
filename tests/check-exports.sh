#!/bin/bash
# Exported symbols must equal the names in the version script: nothing more, nothing less.
set -euo pipefail
lib=$1
sym=$2
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRWV]$/ {print $3}' | sed 's/@.*//' | sort -u)
listed=$(sed -n 's/^[[:space:]]*\(dq_[a-z0-9_]*\);.*/\1/p' "$sym" | sort -u)
extra=$(comm -23 <(printf '%s\n' "$exported") <(printf '%s\n' "$listed"))
missing=$(comm -13 <(printf '%s\n' "$exported") <(printf '%s\n' "$listed"))
echo "exported: $(printf '%s\n' "$exported" | grep -c .) symbols, listed: $(printf '%s\n' "$listed" | grep -c .)"
status=0
if [ -n "$extra" ]; then
    echo "exported but not in $sym (new ABI?):"; printf '  %s\n' $extra; status=1
fi
if [ -n "$missing" ]; then
    echo "listed in $sym but not exported:"; printf '  %s\n' $missing; status=1
fi
exit $status
