#!/usr/bin/env bun
/** `bun scripts/prepare-data.ts ARGS...` is `train prepare-data ARGS...` (src/prepare/command.ts). */
import { main } from "../src/cli.ts";

process.exitCode = await main(["prepare-data", ...process.argv.slice(2)]);
