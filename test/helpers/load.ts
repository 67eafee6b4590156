// The load generator lives in scripts/support/load.ts, beside the demo that uses it too:
// nothing outside test/ imports from test/. This re-export keeps test/helpers/rolling.ts
// working until it imports from there itself.
export * from '../../scripts/support/load.js'
