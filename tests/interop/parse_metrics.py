"""Fetches a /metrics page and parses it with the Prometheus project's own
Python parser (prometheus_client.parser), printing each family's name and
type, then each sample as `name{labels} value`. Exits non-zero if it does not
parse."""

import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    for family in text_string_to_metric_families(text):
        print(f"{family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            print(f"{sample.name}{{{labels}}} {sample.value}" if labels else f"{sample.name} {sample.value}")


if __name__ == "__main__":
    main(sys.argv[1])
