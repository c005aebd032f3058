import { randomBytes } from "node:crypto";

/** The channel idle workers take turns on (next to `holdfast`, which announces ready tasks). */
export const turnsChannel = "holdfast_turns";

/** How long the workers in line wait for a designated worker's answer before skipping it. */
export const turnFallbackMs = 100;

/** A message on `holdfast_turns`: joined the line, left it, answered a wake; a newcomer's
 *  hello and the front's reply with the line as it stands. */
type Message =
  | { t: "join"; id: string; kinds: string[] }
  | { t: "hello"; id: string; n: number }
  | {
      t: "line";
      to: string;
      /** The hello it answers. */
      n: number;
      /** The sender knows no one unknown ahead of it. */
      sure: boolean;
      line: Array<[string, string[]]>;
      outstanding: Array<[string, number]>;
    }
  | { t: "leave"; id: string }
  /** claimed: tasks taken (> 0: it left the line); more: its slots filled, the next one
   *  claims too; skipped: workers it found unresponsive and took the turn of. */
  | { t: "answer"; id: string; kind: string; claimed: number; more: boolean; skipped: string[] };

export interface TurnsDeps {
  /** This worker's kinds. */
  kinds: ReadonlySet<string>;
  /** It is this worker's turn: claim (a claim that starts now), then call `answered`. */
  claim(): void;
  /** Sends a message on the turns channel (a NOTIFY; best effort: a lost one costs a
   *  fallback delay, never a wake-up). */
  send(payload: string): void;
  fallbackMs?: number;
}

/**
 * Which idle worker claims after a wake, so that an enqueue wakes about one claim per ready
 * task instead of one per idle worker (a fleet of 50 idle processes made 50 claims for one
 * task). Workers that are idle (nothing running, nothing claimed ahead, their last claim found
 * nothing) stand in a line, announced on `holdfast_turns`; every worker keeps its view of the
 * line from those messages alone, and Postgres delivers notifications to every listener in one
 * commit order, so the views agree. A `holdfast` wake for kind K is the turn of the first idle
 * worker of K in line that has no turn yet: wakes not answered yet (`outstanding`) name that
 * many workers from the front. The designated worker claims and answers: took tasks (it leaves
 * the line; if its slots filled, `more`: the wake stays outstanding and the next one claims),
 * or found nothing (it goes to the back). No wake-up is lost:
 *
 * - A designated worker that does not answer within `fallbackMs` (dead, stalled, its message
 *   lost) is skipped by all: the next in line claims and names it in its answer.
 * - A worker that joined the line while another worker was not listening yet is unknown to
 *   that worker, which therefore counts one unknown worker ahead of itself until a fallback
 *   shows none answers: so it waits rather than claims twice.
 * - A wake of a kind no idle worker in line handles is claimed by every worker with a free
 *   slot, as before (busy workers are not in line).
 * - The claim runs after the wake arrived, so it sees the task the wake announced; the
 *   rescan timer and the sweep leader stay the safety net for a lost notification.
 */
export class Turns {
  /** This worker in messages: its name is not unique enough (two workers may share it). */
  readonly id: string;
  private line: string[] = [];
  private readonly kindsOf = new Map<string, ReadonlySet<string>>();
  /** Wakes per kind whose turn was not answered yet. */
  private readonly outstanding = new Map<string, number>();
  /** This worker's turn: for which kind, and whether the claim that answers it started. */
  private turn: { kind: string; started: boolean; again: boolean } | undefined;
  /** Workers this worker found unresponsive (named in its next answer). */
  private skipped: string[] = [];
  /** Someone unknown may stand ahead in line (joined before this worker listened), until
   *  the front answers its hello or no one does within fallbackMs. */
  private unknownAhead = true;
  /** Per hello of this worker (until it is sure of the line): what it saw since, to replay
   *  on the view a reply brings. */
  private readonly sinceHello = new Map<number, Array<{ wake: string } | { m: Message }>>();
  /** The longest line a reply brought (the fullest view wins). */
  private adopted = -1;
  private helloTimer: NodeJS.Timeout | undefined;
  private hellos = 0;
  /** Answers sent and not seen back yet: until then this worker's view still counts the
   *  wake it answered, and would give it the turn again. */
  private unechoed = 0;
  /** Whether this worker's last word put it in line (its view learns so only when the message
   *  comes back, after later claims may have asked again). */
  private member = false;
  /** Whether this worker was idle after its last claim. */
  private idle = false;
  /** When the outstanding wakes last moved (the first one arrived, or an answer came). */
  private progressAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly fallbackMs: number;

  constructor(
    name: string,
    private readonly deps: TurnsDeps,
  ) {
    this.id = `${name}#${randomBytes(4).toString("hex")}`;
    this.fallbackMs = deps.fallbackMs ?? turnFallbackMs;
  }

  /** In line, in this worker's view (which follows the messages, as everyone's). */
  get inLine(): boolean {
    return this.line.includes(this.id);
  }

  /** The LISTEN session listens: ask the front of the line how it stands. */
  start(): void {
    this.hellos = 0;
    this.sinceHello.clear();
    this.adopted = -1;
    this.hello();
  }

  private hello(): void {
    this.hellos++;
    this.send({ t: "hello", id: this.id, n: this.hellos });
  }

  /** A `holdfast` wake for `kind`: true if this worker should claim as before (no worker of
   *  that kind known in line); else the line's designated worker claims. */
  wake(kind: string): boolean {
    if (!this.deps.kinds.has(kind)) return false;
    for (const log of this.sinceHello.values()) log.push({ wake: kind });
    return this.countWake(kind);
  }

  private countWake(kind: string): boolean {
    // A claim under way may have started before this task committed: it must not answer.
    if (this.turn?.started) this.turn.again = true;
    if (this.handlers(kind).length === 0) return true;
    if (this.outstanding.size === 0) this.progressAt = performance.now();
    this.outstanding.set(kind, (this.outstanding.get(kind) ?? 0) + 1);
    this.review();
    return false;
  }

  /** A claim starts: the turn it answers, if this worker has one not under way. */
  takeTurn(): string | undefined {
    if (!this.turn || this.turn.started) return undefined;
    this.turn.started = true;
    return this.turn.kind;
  }

  /**
   * A claim ended: `turn` as takeTurn returned it, the runs it claimed, whether they filled
   * every free slot (there may be more), whether the worker is idle now (nothing running or
   * claimed ahead). Answers the turn, or joins or leaves the line.
   */
  claimed(turn: string | undefined, runs: number, filled: boolean, idleNow: boolean): void {
    this.idle = idleNow;
    if (turn !== undefined) {
      if (this.turn?.again && runs === 0) {
        // Found nothing, but a wake came during the claim: claim again before answering.
        this.turn = { kind: turn, started: false, again: false };
        this.deps.claim();
        return;
      }
      this.turn = undefined;
      const skipped = this.skipped.splice(0);
      const more = runs > 0 && filled;
      this.send({ t: "answer", id: this.id, kind: turn, claimed: runs, more, skipped });
      if (runs === 0 && !idleNow) this.send({ t: "leave", id: this.id });
      return;
    }
    if (idleNow && !this.member) this.join();
    else if (!idleNow && this.member) this.send({ t: "leave", id: this.id });
  }

  /** The claim that answered `turn` failed (the lock session is lost): the turn passes on. */
  failed(turn: string | undefined): void {
    this.idle = false;
    if (turn === undefined) return;
    this.turn = undefined;
    const skipped = this.skipped.splice(0);
    this.send({ t: "answer", id: this.id, kind: turn, claimed: 0, more: true, skipped });
    this.send({ t: "leave", id: this.id });
  }

  /** A message on the turns channel (this worker's own included: it sees them in order). */
  message(payload: string): void {
    let m: Message;
    try {
      m = JSON.parse(payload) as Message;
    } catch {
      return;
    }
    if (m.t === "hello") {
      if (m.id === this.id) {
        // From here on, what a reply to this hello will not include.
        this.sinceHello.set(m.n, []);
        this.clearHelloTimer();
        this.helloTimer = setTimeout(() => this.noReply(), this.fallbackMs);
        this.helloTimer.unref();
      } else if (this.line[0] === this.id) {
        this.send({
          t: "line",
          to: m.id,
          n: m.n,
          sure: !this.unknownAhead,
          line: this.line.map((id) => [id, [...(this.kindsOf.get(id) ?? [])]]),
          outstanding: [...this.outstanding],
        });
      }
      return;
    }
    if (m.t === "line") {
      if (m.to === this.id) this.adopt(m);
      return;
    }
    for (const log of this.sinceHello.values()) log.push({ m });
    if (m.t === "answer" && m.id === this.id) this.unechoed = Math.max(0, this.unechoed - 1);
    this.apply(m, true);
    this.review();
  }

  /** A reply to a hello: the sender's view as of that hello, then what came after it here.
   *  Of several replies (two workers each at the front of their view), the fullest wins. */
  private adopt(m: Extract<Message, { t: "line" }>): void {
    const after = this.sinceHello.get(m.n);
    if (!after || m.line.length < this.adopted) return;
    this.adopted = m.line.length;
    const mine = this.inLine;
    const known = this.line;
    this.line = m.line.map(([id]) => id);
    for (const [id, kinds] of m.line) this.kindsOf.set(id, new Set(kinds));
    for (const id of known) if (!this.line.includes(id)) this.line.push(id);
    this.outstanding.clear();
    for (const [kind, n] of m.outstanding) this.outstanding.set(kind, n);
    for (const e of after) {
      if ("wake" in e) {
        if (this.handlers(e.wake).length > 0)
          this.outstanding.set(e.wake, (this.outstanding.get(e.wake) ?? 0) + 1);
      } else this.apply(e.m, false);
    }
    if (m.sure) this.settled();
    if (mine && !this.inLine && this.idle) this.join();
    this.review();
  }

  /** This worker knows the whole line: no one unknown stands ahead of it. */
  private settled(): void {
    this.clearHelloTimer();
    this.sinceHello.clear();
    this.unknownAhead = false;
  }

  /** No sure reply yet. The front may be a newcomer itself, not sure of its view yet: ask
   *  again; after three tries, no one unknown stands ahead of this worker. */
  private noReply(): void {
    this.helloTimer = undefined;
    if (this.hellos < 3) {
      this.hello();
      return;
    }
    this.settled();
    this.review();
  }

  private clearHelloTimer(): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
  }

  /** Applies a join, leave or answer to this worker's view; `live`: not a replay. */
  private apply(m: Message, live: boolean): void {
    if (m.t === "join") {
      this.remove(m.id);
      this.line.push(m.id);
      this.kindsOf.set(m.id, new Set(m.kinds));
    } else if (m.t === "leave") {
      this.remove(m.id);
      this.kindsOf.delete(m.id); // it sends its kinds again when it joins (ids do not repeat)
    } else if (m.t === "answer") {
      this.progressAt = performance.now();
      for (const s of m.skipped) {
        this.remove(s);
        // Skipped as unresponsive while alive: stand in line again.
        if (live && s === this.id) {
          this.member = false;
          if (this.idle && !this.turn) this.join();
        }
      }
      const stays = m.claimed === 0 && this.kindsOf.has(m.id);
      this.remove(m.id);
      if (stays) this.line.push(m.id); // found nothing: to the back
      if (!m.more) {
        const n = (this.outstanding.get(m.kind) ?? 0) - 1;
        if (n > 0) this.outstanding.set(m.kind, n);
        else this.outstanding.delete(m.kind);
      }
    }
  }

  /** The LISTEN session reconnected: messages were missed. Start over as a newcomer. */
  reset(): void {
    this.line = [];
    this.outstanding.clear();
    this.unknownAhead = true;
    this.skipped = [];
    this.clearTimer();
    this.unechoed = 0;
    this.member = false;
    this.start();
    if (this.idle) this.join();
  }

  /** Stopping: leave the line (best effort; a dead worker is skipped after fallbackMs). */
  stop(): void {
    this.clearTimer();
    this.clearHelloTimer();
    if (this.member) this.send({ t: "leave", id: this.id });
    this.idle = false;
  }

  private join(): void {
    this.send({ t: "join", id: this.id, kinds: [...this.deps.kinds] });
  }

  private send(m: Message): void {
    if (m.t === "answer") this.unechoed++;
    if (m.t === "join") this.member = true;
    else if (m.t === "leave") this.member = false;
    else if (m.t === "answer") this.member = m.claimed === 0;
    this.deps.send(JSON.stringify(m));
  }

  private remove(id: string): void {
    const i = this.line.indexOf(id);
    if (i >= 0) this.line.splice(i, 1);
  }

  /** Workers in line that handle `kind`, front first. */
  private handlers(kind: string): string[] {
    return this.line.filter((id) => this.kindsOf.get(id)?.has(kind));
  }

  /** The first `n` turns of `kind` go to the unknown worker (if any) and the front of line. */
  private designated(kind: string, n: number): string[] {
    return this.handlers(kind).slice(0, Math.max(0, n - (this.unknownAhead ? 1 : 0)));
  }

  /** Claims if a wake designates this worker; arms the fallback while wakes wait. */
  private review(): void {
    for (const [kind, n] of this.outstanding) {
      if (!this.turn && this.unechoed === 0 && this.designated(kind, n).includes(this.id)) {
        this.turn = { kind, started: false, again: false };
        this.deps.claim();
      }
    }
    this.clearTimer();
    if (this.outstanding.size === 0) return;
    // Out of line (busy, or not joined yet): only if no one in line answered for long (the
    // whole line died, say); its claims would otherwise be a herd again whenever an answer is
    // late under load.
    const wait = (this.inLine ? 1 : 10) * this.fallbackMs;
    const delay = Math.max(0, this.progressAt + wait - performance.now());
    this.timer = setTimeout(() => this.fallback(), delay);
    this.timer.unref();
  }

  /**
   * Wakes stayed unanswered: the designated workers are taken as gone and the turns pass on.
   * The workers in line do this at about the same time from the same view, so they skip the
   * same ones; an answer names them, for views that differ. A worker out of line steps in
   * only when no one in line answered for ten times as long: it skips them all and claims.
   */
  private fallback(): void {
    this.timer = undefined;
    this.progressAt = performance.now();
    const inLine = this.inLine;
    let claim = false;
    for (const [kind, n] of [...this.outstanding]) {
      const gone = inLine ? this.designated(kind, n) : this.handlers(kind);
      for (const id of gone) {
        if (id === this.id) continue;
        this.remove(id);
        if (!this.skipped.includes(id)) this.skipped.push(id);
      }
      if (!inLine) {
        this.outstanding.delete(kind);
        claim = true;
      }
    }
    this.unknownAhead = false;
    if (claim) this.deps.claim();
    this.review();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
