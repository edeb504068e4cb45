// Helper types for type-checking dashboard JSON (tests/unit/dashboards/test_typecheck.py).
//
// JsonOf<T>: T as JSON can spell it. @grafana/schema declares fields such as
// thresholds.mode as TypeScript string enums (ThresholdsMode.Absolute = "absolute"),
// which only code can produce; JSON holds the string "absolute". JsonOf replaces each
// string enum by the union of its values and keeps everything else, excess-property
// checks and optionality included.
export type JsonOf<T> = T extends string
  ? `${T}`
  : T extends ReadonlyArray<infer U>
    ? JsonOf<U>[]
    : T extends object
      ? { [K in keyof T]: JsonOf<T[K]> }
      : T;

// Types of the Prometheus datasource's queries and annotations, which @grafana/schema does
// not publish (they live in Grafana's Prometheus plugin: its dataquery schema, the same one
// grafana-foundation-sdk's prometheus.Dataquery is generated from, and its annotation
// support, which keeps the query in `target` and the display fields at the top level).
import type { AnnotationQuery, DataQuery, DataSourceRef } from '@grafana/schema';

export interface PromQuery extends DataQuery {
  expr: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  editorMode?: 'code' | 'builder';
  format?: 'time_series' | 'table' | 'heatmap';
  legendFormat?: string;
  intervalFactor?: number;
  interval?: string;
  datasource?: DataSourceRef | null;
}

export interface PromAnnotation extends AnnotationQuery<PromQuery> {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}
