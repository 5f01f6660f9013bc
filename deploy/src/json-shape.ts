/** Guards for parsed YAML and JSON, shared by every deploy/ check. */
export type JsonObject = Record<string, unknown>;

/** A mapping (not null, not a list). */
export const isObject = (v: unknown): v is JsonObject => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The list, or an empty one for anything else (absent fields included). */
export const asArray = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** The mappings in a list (anything else, absent fields included: none). */
export const asObjects = (v: unknown): JsonObject[] => asArray(v).filter(isObject);
