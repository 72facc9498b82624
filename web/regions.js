// Round-trip times to each region's echo endpoint, the best of three, for placement:
// `{ "region": ms }`. Without measurements every region is acceptable.
export async function measureRegions() {
  const rtt = {};
  try {
    const response = await fetch('/api/v1/regions', { cache: 'no-store' });
    const { regions } = await response.json();
    await Promise.all(regions.map(async ({ region, echo_url }) => {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        await fetch(echo_url, { cache: 'no-store' });
        best = Math.min(best, performance.now() - started);
      }
      if (Number.isFinite(best)) rtt[region] = Math.max(1, Math.round(best));
    }));
  } catch { /* none measured */ }
  return rtt;
}
