/**
 * The part of html-to-text's API Herald uses (the package ships no types of
 * its own; see https://github.com/html-to-text/node-html-to-text).
 */
declare module "html-to-text" {
  export interface SelectorDefinition {
    selector: string;
    format?: string;
    options?: Record<string, unknown>;
  }
  export interface HtmlToTextOptions {
    wordwrap?: number | false | null;
    limits?: {
      maxInputLength?: number;
      maxDepth?: number;
      maxChildNodes?: number;
      maxBaseElements?: number;
      ellipsis?: string;
    };
    selectors?: SelectorDefinition[];
  }
  export function convert(html: string, options?: HtmlToTextOptions): string;
  export function compile(options?: HtmlToTextOptions): (html: string) => string;
}
