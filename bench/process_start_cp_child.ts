// The child of bench/process_start's child_process.fork row: reports when it runs.
process.send!(String(process.hrtime.bigint()), () => process.disconnect());
