// Tutorial: each process has its own memory. The child changes its copy of `result`;
// the parent's stays empty.   node dist/examples/separate_memory.js
import * as mp from '../src/index';

// module-level list: every process has its own
const result: number[] = [];

export function squareList(mylist: number[]): void {
  for (const num of mylist) result.push(num * num);
  console.log(`Result(in process p1): [${result.join(', ')}]`);
}

if (require.main === module) {
  const mylist = [1, 2, 3, 4];
  const p1 = new mp.Process({ target: squareList, args: [mylist] });
  p1.start();
  p1.join().then(() => {
    console.log(`Result(in main program): [${result.join(', ')}]`);
  });
}
