import { describe, expect, it } from "vitest";
import { appendOutput } from "../src/lib/logs";

const line = (replica: number, text: string) => ({ replica, time: "2026-12-07T06:00:00Z", line: text });

describe("a followed line in the replicas' logs", () => {
  it("goes at the end of its replica's text, whether or not the text ends a line", () => {
    const logs = [
      { replica: 0, state: "running", logs: "a\nb\n" },
      { replica: 1, state: "running", logs: "x" },
    ];
    const once = appendOutput(logs, line(0, "c"), 10);
    expect(once[0].logs).toBe("a\nb\nc\n");
    expect(once[1]).toBe(logs[1]); // the other replica untouched
    expect(appendOutput(logs, line(1, "y"), 10)[1].logs).toBe("x\ny\n");
    expect(logs[0].logs).toBe("a\nb\n"); // a new array, the old one as it was
  });

  it("adds a replica not shown yet, in slot order, and keeps the last lines", () => {
    const logs = [{ replica: 2, state: "running", logs: "" }];
    const added = appendOutput(logs, line(0, "first"), 10);
    expect(added.map((r) => r.replica)).toEqual([0, 2]);
    expect(added[0].logs).toBe("first\n");
    let many = added;
    for (let i = 0; i < 5; i++) many = appendOutput(many, line(0, `n${i}`), 3);
    expect(many[0].logs).toBe("n2\nn3\nn4\n");
  });
});
