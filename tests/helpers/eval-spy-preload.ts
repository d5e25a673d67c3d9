/** Preloaded into a `train` subprocess: logs the batch of every evalLoss call (see eval-spy.ts). */
import { appendFileSync } from "node:fs";
import { NativeModel } from "../../src/backend/native.ts";
import { batchDigest, EVAL_SPY_LOG } from "./eval-spy.ts";

const evalLoss = NativeModel.prototype.evalLoss;
NativeModel.prototype.evalLoss = function (this: NativeModel, x: Int32Array, y: Int32Array): number {
  appendFileSync(EVAL_SPY_LOG, `${batchDigest(x, y)}\n`);
  return evalLoss.call(this, x, y);
};
