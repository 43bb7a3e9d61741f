/**
 * The C addons `npm install` builds (native/*.c). Each has a portable fallback, so one that did not build, or that
 * its switch turns off, is logged once at start and the caller goes on without it.
 */
import { createRequire } from 'node:module';
import { componentLogger } from './logger.ts';

const require = createRequire(import.meta.url);

/**
 * `build/Release/<name>.node`, or undefined when `disabled` or when it did not build; `fallback` says, for the log
 * line, what runs instead.
 */
export function loadNativeAddon<T>(name: string, options: { component: string; disabled: boolean; fallback: string }): T | undefined {
  if (options.disabled) return undefined;
  try {
    return require(`../../build/Release/${name}.node`) as T;
  } catch (err) {
    componentLogger(options.component).info({ err: (err as Error).message, addon: name }, `native addon not built (npm install builds it); ${options.fallback}`);
    return undefined;
  }
}
