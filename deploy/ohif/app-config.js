// The OHIF viewer's configuration for this deployment: nginx serves it in place of the image's
// own, on the archive's origin, so the DICOMweb roots are this origin's /dicomweb and /wado
// (no CORS). The bearer token comes from a launch link (`/viewer?StudyInstanceUIDs=...&token=`,
// as a RIS or an EHR opens a study) or, at a site with an identity provider, from OHIF's `oidc`
// settings (its documentation: "User Account Control").
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  defaultDataSourceName: 'pacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {
        friendlyName: 'Municipal PACS',
        name: 'pacs',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicomweb',
        wadoRoot: window.location.origin + '/dicomweb',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
