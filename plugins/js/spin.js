// `spin`, in JavaScript: loops forever, to show that a campaign's fuel stops
// a runaway plugin (cause `out_of_fuel`) while the gateway keeps serving.

export function handle(_event) {
  let n = 0;
  for (;;) {
    n = (n + 1) | 0;
  }
}
