-- The driving score (vt-score/1, docs/SCORING.md) and the battery figures (vt-battery/1,
-- docs/BATTERY.md) as DuckDB table macros over the store, with the algorithms' default parameters,
-- for fleet-wide rankings and distributions in one query. `telematics query` loads them; in the
-- duckdb shell, after attaching the store (docs/ANALYSTS.md): .read figures/figures.sql
--
--   SELECT * FROM vt_score(TIMESTAMP '2026-01-01', TIMESTAMP '2027-01-01') ORDER BY score;
--   SELECT * FROM vt_battery(TIMESTAMP '2026-01-01', TIMESTAMP '2027-01-01') ORDER BY soh_last;
--   SELECT * FROM vt_score_events(TIMESTAMP '2026-03-01', TIMESTAMP '2026-03-02') WHERE severe;
--
-- The Python reference (figures/score.py, figures/battery.py) sums in a different order, so a
-- figure may differ in its last bits; the score, rounded to 0.1, agrees (tests/unit/test_figures_sql.py).

-- Harsh events: points (samples, and the vehicle's trigger events on the two acceleration signals)
-- at or over a kind's threshold, one event per run of points at most 2 s apart.
CREATE OR REPLACE TEMP MACRO vt_score_events(t_from, t_to) AS TABLE
WITH pts AS (
    SELECT device_id, epoch_ns(ts) AS t, 'braking' AS kind, -accel_long_mps2 / 9.80665 AS g
    FROM driving_samples WHERE ts BETWEEN t_from AND t_to
    UNION ALL
    SELECT device_id, epoch_ns(ts), 'acceleration', accel_long_mps2 / 9.80665
    FROM driving_samples WHERE ts BETWEEN t_from AND t_to
    UNION ALL
    SELECT device_id, epoch_ns(ts), 'cornering', abs(accel_lat_mps2) / 9.80665
    FROM driving_samples WHERE ts BETWEEN t_from AND t_to
    UNION ALL
    SELECT device_id, epoch_ns(ts), CASE WHEN value < 0 THEN 'braking' ELSE 'acceleration' END, abs(value) / 9.80665
    FROM trigger_events WHERE ts BETWEEN t_from AND t_to AND signal = 'Vehicle.Acceleration.Longitudinal'
    UNION ALL
    SELECT device_id, epoch_ns(ts), 'cornering', abs(value) / 9.80665
    FROM trigger_events WHERE ts BETWEEN t_from AND t_to AND signal = 'Vehicle.Acceleration.Lateral'
), over AS (
    SELECT * FROM pts
    WHERE g >= CASE kind WHEN 'braking' THEN 0.25 WHEN 'acceleration' THEN 0.20 ELSE 0.30 END
), marked AS (
    SELECT *, CASE WHEN t - lag(t) OVER w <= 2000000000 THEN 0 ELSE 1 END AS starts
    FROM over WINDOW w AS (PARTITION BY device_id, kind ORDER BY t, g)
), numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY device_id, kind ORDER BY t, g ROWS UNBOUNDED PRECEDING) AS n
    FROM marked
)
SELECT device_id, kind, n AS event, min(t) AS start_ns, max(t) AS end_ns, max(g) AS peak_g,
       max(g) >= CASE kind WHEN 'braking' THEN 0.45 WHEN 'acceleration' THEN 0.45 ELSE 0.56 END AS severe
FROM numbered GROUP BY device_id, kind, n;

-- The period's totals and score per vehicle.
CREATE OR REPLACE TEMP MACRO vt_score(t_from, t_to) AS TABLE
WITH s AS (
    SELECT device_id, epoch_ns(ts) AS t, speed_mps AS v, longitude_deg AS lon, odometer_m AS odo,
           lead(epoch_ns(ts)) OVER w AS t2, lead(odometer_m) OVER w AS odo2
    FROM driving_samples WHERE ts BETWEEN t_from AND t_to
    WINDOW w AS (PARTITION BY device_id ORDER BY ts, odometer_m, speed_mps, accel_long_mps2, accel_lat_mps2)
), pairs AS (  -- consecutive samples of distinct instants; a gap over 5 s counts nothing
    SELECT *, (t2 - t) / 1e9 AS dt, t2 - t > 5000000000 AS gap FROM s WHERE t2 IS NOT NULL AND t2 > t
), steps AS (
    SELECT *,
           CASE WHEN gap THEN 0 ELSE greatest(0, odo2 - odo) END AS dist,
           CASE WHEN NOT gap AND v >= 0.5 THEN dt ELSE 0 END AS moving,
           (((t / 3.6e12 + coalesce(lon / 15.0, 0.0)) % 24) + 24) % 24 AS hour,
           NOT gap AND v > 130 / 3.6 AS fast
    FROM pairs
), runs AS (
    SELECT *, sum(CASE WHEN fast THEN 0 ELSE 1 END) OVER (PARTITION BY device_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS run
    FROM steps
), totals AS (
    SELECT device_id, sum(dist) / 1000 AS km, sum(moving) AS driving_s,
           sum(CASE WHEN hour >= 22 OR hour < 5 THEN moving ELSE 0 END) AS night_s
    FROM steps GROUP BY device_id
), speeding AS (
    SELECT device_id, sum(len) AS speeding_s FROM (
        SELECT device_id, run, sum(dt) AS len FROM runs WHERE fast GROUP BY device_id, run
    ) WHERE len >= 5 GROUP BY device_id
), ev AS (
    SELECT device_id,
           count(*) FILTER (kind = 'braking' AND NOT severe) AS braking,
           count(*) FILTER (kind = 'braking' AND severe) AS braking_severe,
           count(*) FILTER (kind = 'acceleration' AND NOT severe) AS acceleration,
           count(*) FILTER (kind = 'acceleration' AND severe) AS acceleration_severe,
           count(*) FILTER (kind = 'cornering' AND NOT severe) AS cornering,
           count(*) FILTER (kind = 'cornering' AND severe) AS cornering_severe
    FROM vt_score_events(t_from, t_to) GROUP BY device_id
), joined AS (
    SELECT t.*, coalesce(sp.speeding_s, 0) AS speeding_s,
           coalesce(braking, 0) AS braking, coalesce(braking_severe, 0) AS braking_severe,
           coalesce(acceleration, 0) AS acceleration, coalesce(acceleration_severe, 0) AS acceleration_severe,
           coalesce(cornering, 0) AS cornering, coalesce(cornering_severe, 0) AS cornering_severe
    FROM totals t LEFT JOIN speeding sp USING (device_id) LEFT JOIN ev USING (device_id)
)
SELECT *,
       floor(10 * least(100, greatest(0, 100
           - 100 / greatest(km, 10) * (braking * 1 + braking_severe * 3 + acceleration * 0.5
                                       + acceleration_severe * 2 + cornering * 0.5 + cornering_severe * 2)
           - CASE WHEN driving_s > 0 THEN 100 * speeding_s / driving_s * 1.0 + 100 * night_s / driving_s * 0.2 ELSE 0 END
       )) + 0.5) / 10 AS score
FROM joined;

-- Battery figures per vehicle: SoH (the BMS's SOCE estimate) first and last, equivalent full cycles
-- and throughput (increases of the cumulative counters; a decrease is a reset), DC fast charging share.
CREATE OR REPLACE TEMP MACRO vt_battery(t_from, t_to) AS TABLE
WITH b AS (
    SELECT device_id, ts, soh_pct, consumed_energy_j, charged_energy_j, charge_power_w, is_charging,
           lead(consumed_energy_j) OVER w - consumed_energy_j AS d_out,
           lead(charged_energy_j) OVER w - charged_energy_j AS d_in
    FROM battery_samples WHERE ts BETWEEN t_from AND t_to
    WINDOW w AS (PARTITION BY device_id ORDER BY ts, charged_energy_j, consumed_energy_j, soc_pct)
)
SELECT device_id,
       arg_min(soh_pct, ts) AS soh_first,
       arg_max(soh_pct, ts) AS soh_last,
       sum(greatest(0, coalesce(d_out, 0))) / 3.6e6 / 75.0 AS full_cycles,
       sum(greatest(0, coalesce(d_out, 0)) + greatest(0, coalesce(d_in, 0))) / 3.6e6 AS energy_throughput_kwh,
       sum(CASE WHEN is_charging AND charge_power_w >= 50000 THEN greatest(0, coalesce(d_in, 0)) ELSE 0 END)
           / nullif(sum(greatest(0, coalesce(d_in, 0))), 0) AS dc_share
FROM b GROUP BY device_id;
