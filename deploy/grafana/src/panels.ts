/**
 * Panel and dashboard helpers shared by the three dashboards, so each dashboard file reads as a list of
 * questions (title, description, query) rather than builder plumbing. Every panel and query uses the
 * dashboard's `datasource` variable, which the validator (deploy/src/dashboards.ts) insists on.
 */
import {
  DashboardBuilder,
  DashboardCursorSync,
  DashboardLinkBuilder,
  DashboardLinkType,
  DatasourceVariableBuilder,
  MappingType,
  QueryVariableBuilder,
  RowBuilder,
  ThresholdsConfigBuilder,
  ThresholdsMode,
  type Dashboard,
  type DataSourceRef,
  type DataTransformerConfig,
  type DynamicConfigValue,
  type Threshold,
  type ValueMapping,
  VariableRefresh,
  type VariableSort,
} from '@grafana/grafana-foundation-sdk/dashboard';
import {
  BigValueColorMode,
  BigValueGraphMode,
  BigValueTextMode,
  GraphThresholdsStyleConfigBuilder,
  GraphThresholdsStyleMode,
  LegendDisplayMode,
  LegendPlacement,
  ReduceDataOptionsBuilder,
  SortOrder,
  TableSortByFieldStateBuilder,
  TooltipDisplayMode,
  VizLegendOptionsBuilder,
  VizTooltipOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import { DataqueryBuilder, PromQueryFormat } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as HeatmapPanelBuilder, HeatmapColorOptionsBuilder, HeatmapColorMode, YAxisConfigBuilder } from '@grafana/grafana-foundation-sdk/heatmap';
import { PanelBuilder as StatPanelBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TablePanelBuilder } from '@grafana/grafana-foundation-sdk/table';
import { PanelBuilder as TimeseriesPanelBuilder } from '@grafana/grafana-foundation-sdk/timeseries';

/** Name of the datasource variable every dashboard has; panels refer to it as `${datasource}`. */
export const DATASOURCE_VARIABLE = 'datasource';
export const DATASOURCE: DataSourceRef = { type: 'prometheus', uid: '${' + DATASOURCE_VARIABLE + '}' };
/** Tag shared by the dashboards: the dashboards link to each other through it. */
export const TAG = 'ckpt';

/** Grafana unit ids used here (`count:<unit>` is Grafana's custom count unit, scaled with K, M, ...). */
export const UNIT = {
  seconds: 's',
  bytes: 'bytes',
  bytesPerSecond: 'Bps',
  ratio: 'percentunit',
  count: 'short',
  none: 'none',
  perSecond: (what: string) => `count:${what}/s`,
  perMinute: (what: string) => `count:${what}/min`,
} as const;

/** Standard colours, by what the operator should do about a value. */
const OK = 'green';
const WATCH = 'orange';
const ACT = 'red';
const INFO = 'blue';

export interface Query {
  expr: string;
  /** Legend template, e.g. `{{vm}}`; a plain name when the query returns one series. */
  legend?: string;
  /** One value at the end of the range (tables); otherwise a range query. */
  instant?: boolean;
  format?: 'table' | 'heatmap';
}

/** Prometheus targets on the datasource variable, with refIds A, B, ... in order. */
function targets(queries: readonly Query[]): DataqueryBuilder[] {
  return queries.map((q, i) => {
    const t = new DataqueryBuilder().expr(q.expr).refId(String.fromCharCode(65 + i)).datasource(DATASOURCE);
    if (q.legend !== undefined) t.legendFormat(q.legend);
    if (q.instant) t.instant();
    if (q.format === 'table') t.format(PromQueryFormat.Table);
    if (q.format === 'heatmap') t.format(PromQueryFormat.Heatmap);
    return t;
  });
}

interface PanelSpec {
  title: string;
  /** What the panel shows and what the operator should conclude from it. */
  description: string;
  queries: readonly Query[];
  /** Grid columns out of 24 and rows; defaults per panel kind. */
  width?: number;
  height?: number;
}

/** Colour steps: the first applies from -infinity, the others from their value up. */
export type Steps = readonly [string, ...(readonly [number, string])[]];

function thresholds(steps: Steps): ThresholdsConfigBuilder {
  const [base, ...rest] = steps;
  const list: Threshold[] = [{ value: null, color: base }, ...rest.map(([value, color]) => ({ value, color }))];
  return new ThresholdsConfigBuilder().mode(ThresholdsMode.Absolute).steps(list);
}

/** Zero is good, anything above needs action (error counters, down targets). */
export const ZERO_IS_OK: Steps = [OK, [1, ACT]];
/** Zero is good, anything above deserves a look (events that are normal now and then). */
export const ZERO_IS_NORMAL: Steps = [OK, [1, WATCH]];
/** At least one is good, none is bad (targets up). */
export const NONE_IS_BAD: Steps = [ACT, [1, OK]];
/** No judgement: informational values. */
export const NEUTRAL: Steps = [INFO];
/** Lower is better: green below `watch`, orange from it, red from `act`. */
export const below = (watch: number, act: number): Steps => [OK, [watch, WATCH], [act, ACT]];

/** Value-to-text mappings, e.g. `{ 0: ['fresh', 'green'], 1: ['STALE', 'red'] }`. */
export function valueText(map: Record<number, readonly [string, string]>): ValueMapping[] {
  const options: Record<string, { text: string; color: string; index: number }> = {};
  Object.entries(map).forEach(([value, [text, color]], index) => { options[value] = { text, color, index }; });
  return [{ type: MappingType.ValueToText, options }];
}

/** What every panel builder of the SDK has: the frame every panel here gets the same way. */
interface FramedPanel<T> {
  title(title: string): T;
  description(description: string): T;
  datasource(ref: DataSourceRef): T;
  targets(targets: DataqueryBuilder[]): T;
  span(width: number): T;
  height(height: number): T;
}

/** Title, description, the `${datasource}` variable, the queries, and the size (the spec's, else the kind's). */
function framed<T extends FramedPanel<T>>(panel: T, spec: Omit<PanelSpec, 'queries'>, queries: readonly Query[], width: number, height: number): T {
  return panel
    .title(spec.title)
    .description(spec.description)
    .datasource(DATASOURCE)
    .targets(targets(queries))
    .span(spec.width ?? width)
    .height(spec.height ?? height);
}

/** A time series with a legend (a table with mean/max/last when `legendTable`), a shared tooltip and a unit. */
export function timeseries(spec: PanelSpec & { unit: string; min?: number; max?: number; legendTable?: boolean; line?: number }): TimeseriesPanelBuilder {
  const legend = new VizLegendOptionsBuilder().showLegend(true).placement(LegendPlacement.Bottom);
  if (spec.legendTable) legend.displayMode(LegendDisplayMode.Table).calcs(['mean', 'max', 'lastNotNull']).sortBy('Max').sortDesc(true);
  else legend.displayMode(LegendDisplayMode.List);
  const panel = framed(new TimeseriesPanelBuilder(), spec, spec.queries, 12, 8)
    .unit(spec.unit)
    .fillOpacity(10)
    .legend(legend)
    .tooltip(new VizTooltipOptionsBuilder().mode(TooltipDisplayMode.Multi).sort(SortOrder.Descending));
  if (spec.min !== undefined) panel.min(spec.min);
  if (spec.max !== undefined) panel.max(spec.max);
  // A dashed line at the value the operator compares against (e.g. the freshness limit).
  if (spec.line !== undefined) {
    panel.thresholds(thresholds([OK, [spec.line, ACT]])).thresholdsStyle(new GraphThresholdsStyleConfigBuilder().mode(GraphThresholdsStyleMode.Dashed));
  }
  return panel;
}

/** One big number per query (named by the legend when there are several), coloured by `steps`. */
export function stat(spec: PanelSpec & { unit: string; steps: Steps; mappings?: ValueMapping[]; noValue?: string; decimals?: number }): StatPanelBuilder {
  const panel = framed(new StatPanelBuilder(), spec, spec.queries, 4, 4)
    .unit(spec.unit)
    .thresholds(thresholds(spec.steps))
    .colorMode(BigValueColorMode.Background)
    .graphMode(BigValueGraphMode.Area)
    .textMode(spec.queries.length > 1 ? BigValueTextMode.ValueAndName : BigValueTextMode.Value)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false));
  if (spec.mappings) panel.mappings(spec.mappings);
  if (spec.noValue !== undefined) panel.noValue(spec.noValue);
  if (spec.decimals !== undefined) panel.decimals(spec.decimals);
  return panel;
}

export interface TableColumn {
  /** Column name after the merge: `Value #A` for query A's value, or a label name. */
  field: string;
  /** Header shown. */
  title: string;
  unit?: string;
  mappings?: ValueMapping[];
  /** Colour the cell's background by these steps. */
  steps?: Steps;
  /** A data link on the cell (Grafana URL template, e.g. `/d/ckpt-vm?var-vm=${__value.raw}`). */
  link?: { title: string; url: string };
}

/**
 * A table of instant queries merged on their labels (one row per label set), with `columns` first and
 * in order, without the time column, sorted by the first value column, largest first. Aggregate the
 * queries `by` the labels to show: every label left on a series becomes a column.
 */
export function table(spec: PanelSpec & { columns: readonly TableColumn[] }): TablePanelBuilder {
  const indexByName: Record<string, number> = {};
  const renameByName: Record<string, string> = {};
  spec.columns.forEach((c, i) => { indexByName[c.field] = i; renameByName[c.field] = c.title; });
  const organize: DataTransformerConfig = {
    id: 'organize',
    options: { excludeByName: { Time: true }, indexByName, renameByName },
  };
  const sortColumn = spec.columns.find((c) => c.field.startsWith('Value')) ?? spec.columns[0]!;
  const panel = framed(new TablePanelBuilder(), spec, spec.queries.map((q) => ({ ...q, instant: true, format: 'table' as const })), 12, 9)
    .transformations([{ id: 'merge', options: {} }, organize])
    .sortBy([new TableSortByFieldStateBuilder().displayName(sortColumn.title).desc(true)]);
  for (const c of spec.columns) {
    const properties: DynamicConfigValue[] = [];
    if (c.unit !== undefined) properties.push({ id: 'unit', value: c.unit });
    if (c.mappings) properties.push({ id: 'mappings', value: c.mappings });
    if (c.steps) {
      properties.push({ id: 'thresholds', value: thresholds(c.steps).build() });
      properties.push({ id: 'custom.cellOptions', value: { type: 'color-background' } });
    }
    if (c.link) properties.push({ id: 'links', value: [{ title: c.link.title, url: c.link.url }] });
    // Overrides match the name shown, i.e. after the organize transformation's rename.
    if (properties.length > 0) panel.overrideByName(c.title, properties);
  }
  return panel;
}

/** A heatmap of a Prometheus histogram: `expr` must be `sum by (le) (rate(..._bucket[...]))`. */
export function heatmap(spec: Omit<PanelSpec, 'queries'> & { expr: string; unit: string }): HeatmapPanelBuilder {
  return framed(new HeatmapPanelBuilder(), spec, [{ expr: spec.expr, legend: '{{le}}', format: 'heatmap' }], 12, 8)
    // The buckets are already counted by Prometheus: Grafana must not re-bucket them.
    .calculate(false)
    .yAxis(new YAxisConfigBuilder().unit(spec.unit))
    .color(new HeatmapColorOptionsBuilder().mode(HeatmapColorMode.Scheme).scheme('Oranges').fill('dark-orange').exponent(0.5).steps(64).reverse(false))
    .showLegend()
    .showYHistogram();
}

export const row = (title: string): RowBuilder => new RowBuilder(title);

/** A template variable listing one label's values from the ckpt datasource, refreshed with the time range. */
export function labelValuesVariable(spec: { name: string; label: string; description: string; query: string; sort: VariableSort }): QueryVariableBuilder {
  return new QueryVariableBuilder(spec.name)
    .label(spec.label)
    .description(spec.description)
    .datasource(DATASOURCE)
    .query(spec.query)
    .refresh(VariableRefresh.OnTimeRangeChanged)
    .sort(spec.sort);
}

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
}

/**
 * A dashboard with what all three share: the `ckpt` tag, the Prometheus datasource variable, a 30 s
 * refresh over the last hour, a shared crosshair and a menu of the other `ckpt` dashboards.
 */
export function ckptDashboard(spec: DashboardSpec): DashboardBuilder {
  return new DashboardBuilder(spec.title)
    .uid(spec.uid)
    .description(spec.description)
    .tags([TAG])
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .timezone('browser')
    .tooltip(DashboardCursorSync.Crosshair)
    .readonly()
    .link(new DashboardLinkBuilder('Checkpointing').type(DashboardLinkType.Dashboards).tags([TAG]).asDropdown(true).includeVars(true).keepTime(true))
    .withVariable(new DatasourceVariableBuilder(DATASOURCE_VARIABLE).label('Data source').type('prometheus'));
}

/**
 * Builds the dashboard and numbers its panels 1, 2, ... in order (the SDK leaves ids unset and rows
 * at 0, and Grafana needs them unique for links to a panel and for `viewPanel`).
 */
export function finish(builder: DashboardBuilder): Dashboard {
  const dashboard = builder.build();
  let id = 0;
  for (const panel of dashboard.panels ?? []) {
    panel.id = ++id;
    if ('panels' in panel) for (const inner of panel.panels) inner.id = ++id;
  }
  return dashboard;
}
