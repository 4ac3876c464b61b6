"""Search early-exit networks for a Cortex-M7 (STM32F746-class) through the library API, then export the best one,
compile it to firmware and run it under QEMU.

    python examples/search_cortex_m7.py [--out runs/example-m7] [--quick]

The same as `edgenas search --target=cortex-m7 --sram 256KB`, `edgenas export RUN --best`,
`edgenas compile RUN/export --target cortex-m7` and `edgenas profile FIRMWARE --device qemu`.
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

    config = SearchConfig(target="cortex-m7", dataset="mnist5k", seed=0)
    if args.quick:
        config = replace(config, pop_size=8, n_gen=3, supernet=replace(config.supernet, steps=150))
    # budgets can be tightened here exactly as with the CLI flags
    result = api.search(config=config, out=args.out, resume=True, ui=RichUI(), sram="256KB")
    for member in result.pareto:
        print(f"#{member['id']}: test accuracy {member['test_accuracy']:.3f}, "
              f"expected latency {member['latency_expected_s'] * 1e3:.2f} ms (worst {member['latency_worst_s'] * 1e3:.2f} ms), "
              f"SRAM {member['peak_sram_bytes'] / 1024:.0f} KiB, flash {member['flash_bytes'] / 1024:.0f} KiB, "
              f"{member['n_exits']} exits")
    export = api.export(result.run_dir, out=result.run_dir / "export")
    print(export.summary())
    firmware = api.compile(result.run_dir / "export", target="cortex-m7", out=result.run_dir / "firmware")
    print(firmware.summary())
    profile = api.profile(firmware.project_dir, target="cortex-m7", device="qemu")
    for exit_id, row in profile["exits"].items():
        print(f"exit {exit_id}: {row['instructions']['mean']:,.0f} instructions, "
              f"{row.get('instructions_per_mac', float('nan')):.2f} per MAC")
    print("same exit and logits as onnxruntime:", profile["check"]["passed"])


if __name__ == "__main__":
    main()
