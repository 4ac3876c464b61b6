"""Search early-exit networks for a Cortex-M7 (STM32F746-class) through the library API, then export the best one.

    python examples/search_cortex_m7.py [--out runs/example-m7] [--quick]

The same as `edgenas search --target=cortex-m7` followed by `edgenas export RUN --best`.
"""
import argparse
from dataclasses import replace

from edgenas import api
from edgenas.search.driver import SearchConfig
from edgenas.ui import RichUI


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/example-m7")
    parser.add_argument("--quick", action="store_true", help="a few-minute run with smaller settings")
    args = parser.parse_args()

    config = SearchConfig(target="cortex-m7", dataset="digits", seed=0)
    if args.quick:
        config = replace(config, pop_size=8, n_gen=3, supernet=replace(config.supernet, epochs=5))
    # budgets can be tightened here exactly as with the CLI flags
    result = api.search(config=config, out=args.out, resume=True, ui=RichUI(), sram="256KB")
    for member in result.pareto:
        print(f"#{member['id']}: test accuracy {member['test_accuracy']:.3f}, "
              f"expected latency {member['latency_expected_s'] * 1e3:.2f} ms (worst {member['latency_worst_s'] * 1e3:.2f} ms), "
              f"SRAM {member['peak_sram_bytes'] / 1024:.0f} KiB, flash {member['flash_bytes'] / 1024:.0f} KiB, "
              f"{member['n_exits']} exits")
    report = api.export(result.run_dir)
    print(report)


if __name__ == "__main__":
    main()
